"""Parameter rules in scikit-learn's own constraint machinery, and the kinds it lacks.

Each estimator lists the values every parameter accepts in a class attribute
``_parameter_constraints`` (parameter name → list of constraints, any of which may hold), in
scikit-learn's vocabulary: ``None``, a type, ``"boolean"``, ``"random_state"``,
:class:`Interval`, :class:`StrOptions`, or a :class:`Rule` defined here. ``fit`` is decorated
with ``sklearn_compat.base._fit_context`` and ``transform`` with :func:`validated_call`, so the
parameters are checked once per call by scikit-learn's ``BaseEstimator._validate_params``
(nested estimators fitted inside skip it). A value that satisfies none raises scikit-learn's
``InvalidParameterError`` (a ``ValueError`` and a ``TypeError``) naming the parameter, what it
accepts and the value: ``The 'C_grid' parameter of DFRClassifier must be a non-empty sequence
of C > 0, each finite. Got 'abc' instead.``

Three departures from scikit-learn's classes, each for a measured reason:

* :class:`Interval` refuses booleans (scikit-learn's accepts ``True`` as the integer 1, and
  ``image_size=True`` would pass);
* :class:`StrOptions` keeps the options in the given order (scikit-learn's takes a set, whose
  order in the message changes from run to run);
* :class:`Rule` (a predicate and its description: sequences, paths, device strings) subclasses
  ``Options``, because scikit-learn's ``make_constraint`` takes only its own constraint classes
  and raises ``Unknown constraint type`` for any other ``_Constraint``.
"""

from __future__ import annotations

import functools
import numbers
import os

import numpy as np
from sklearn import config_context, get_config
from sklearn.utils._param_validation import Interval as _SklearnInterval
from sklearn.utils._param_validation import InvalidParameterError, Options
from sklearn.utils._param_validation import StrOptions as _SklearnStrOptions

__all__ = [
    "IMAGE_SIZE",
    "PATH",
    "Interval",
    "InvalidParameterError",
    "Rule",
    "SequenceOf",
    "StrOptions",
    "validated_call",
]


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


class Interval(_SklearnInterval):
    """scikit-learn's ``Interval`` without booleans: ``True`` is not the integer 1 here."""

    def is_satisfied_by(self, val):
        return not _is_bool(val) and super().is_satisfied_by(val)


class StrOptions(_SklearnStrOptions):
    """scikit-learn's ``StrOptions`` keeping the options in the order given."""

    def __init__(self, options, *, deprecated=None):
        super().__init__(dict.fromkeys(options).keys(), deprecated=deprecated)


class Rule(Options):
    """Values accepted by ``predicate``, described by ``text`` in error messages."""

    def __init__(self, predicate, text):
        super().__init__(object, set())
        self.predicate, self.text = predicate, text

    def is_satisfied_by(self, val):
        return bool(self.predicate(val))

    def __str__(self):
        return self.text


class SequenceOf(Rule):
    """A list, tuple or 1-D array (not a str) whose items all satisfy ``item``."""

    def __init__(self, item, text, *, allow_empty=False):
        super().__init__(self._holds, text)
        self.item, self.allow_empty = item, allow_empty

    def _holds(self, value) -> bool:
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                return False
        elif not isinstance(value, (list, tuple)):
            return False
        if not len(value):
            return self.allow_empty
        return all(self.item(v) for v in value)


def validated_call(method):
    """Check the estimator's parameters once before ``method`` (a ``transform``-like call).

    ``set_params`` may change a fitted estimator, so a call after ``fit`` checks again, through
    the same ``_validate_params`` as ``fit``. As in ``_fit_context``, what runs inside (nested
    calls of the estimator's own decorated methods, inner estimators) skips the check, and so
    does the call itself inside another estimator's ``fit``.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not get_config()["skip_parameter_validation"]:
            self._validate_params()
        with config_context(skip_parameter_validation=True):
            return method(self, *args, **kwargs)

    return wrapper


class FitTransformOnceMixin:
    """``fit_transform`` that checks the parameters once: the ``fit`` and ``transform`` it runs
    skip their own checks. Listed before scikit-learn's ``TransformerMixin``."""

    @validated_call
    def fit_transform(self, X, y=None, **fit_params):
        """Fit to ``X`` (and ``y``), then transform ``X``; the parameters are checked once."""
        return super().fit_transform(X, y, **fit_params)


#: The side of the square frame (the model input): one rule for every estimator; a model may
#: need more (its patch size), checked when it loads.
IMAGE_SIZE = Interval(numbers.Integral, 1, None, closed="left")

PATH = (str, os.PathLike)
