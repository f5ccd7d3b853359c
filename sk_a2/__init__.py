"""sk_a2: Attending on Attention (A²) as scikit-learn estimators."""

__version__ = "0.1.0"
