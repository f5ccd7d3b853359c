"""Parameter rules declared once per estimator, in the scikit-learn style.

Each estimator lists the values every parameter accepts in a class attribute
``_parameter_constraints`` (a dict: parameter name → list of constraints, any of which may hold),
and calls :func:`validate_params` at the start of ``fit`` (and of ``transform``, since
``set_params`` may have changed a fitted estimator). A value that satisfies none gets an
:class:`InvalidParameterError` naming the parameter and what it accepts, e.g.
``C_grid must be a non-empty sequence of C > 0, got 'abc'``.

A constraint is ``None`` (the value ``None``), a type or tuple of types (instances of it), or a
:class:`Constraint`. The error class derives from scikit-learn's ``InvalidParameterError`` when
that (private) name exists, so code catching scikit-learn's parameter errors catches these too;
the import is guarded, so a scikit-learn release that moves it cannot break this module.
"""

from __future__ import annotations

import numbers
import os
from abc import ABC, abstractmethod

import numpy as np

try:  # scikit-learn's validator is private: never let its layout break this import
    from sklearn.utils._param_validation import InvalidParameterError as _SklearnInvalid
except ImportError:  # pragma: no cover - depends on the scikit-learn release
    _SklearnInvalid = type("_SklearnInvalid", (ValueError, TypeError), {})

__all__ = [
    "IMAGE_SIZE",
    "PATH",
    "RANDOM_STATE",
    "Boolean",
    "Constraint",
    "Interval",
    "InvalidParameterError",
    "SequenceOf",
    "StrOptions",
    "Text",
    "describe",
    "validate_params",
]


class InvalidParameterError(_SklearnInvalid, ValueError, TypeError):
    """A parameter value outside what the estimator accepts (a ValueError and a TypeError)."""


class Constraint(ABC):
    """One kind of accepted value: ``is_satisfied_by(value)`` and readable ``descriptions()``."""

    @abstractmethod
    def is_satisfied_by(self, value) -> bool:
        """Whether ``value`` is accepted."""

    def descriptions(self) -> list[str]:
        """The accepted values in words (several items when the constraint lists options)."""
        return [str(self)]

    @abstractmethod
    def __str__(self) -> str:
        """The accepted values in words."""


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and not np.isnan(value))


class Interval(Constraint):
    """Numbers of ``type`` (``numbers.Integral`` or ``numbers.Real``) between two bounds.

    ``left`` / ``right`` may be ``None`` (unbounded); ``closed`` is ``"left"``, ``"right"``,
    ``"both"`` or ``"neither"``. Booleans and NaN are never accepted.
    """

    def __init__(self, type, left, right, *, closed):
        self.type, self.left, self.right, self.closed = type, left, right, closed

    def is_satisfied_by(self, value) -> bool:
        if not (_is_int(value) if self.type is numbers.Integral else _is_real(value)):
            return False
        low_ok = self.left is None or (
            value >= self.left if self.closed in ("left", "both") else value > self.left)
        high_ok = self.right is None or (
            value <= self.right if self.closed in ("right", "both") else value < self.right)
        return low_ok and high_ok

    def __str__(self) -> str:
        kind = "an integer" if self.type is numbers.Integral else "a number"
        if self.left is not None and self.right is not None:
            lo = "[" if self.closed in ("left", "both") else "("
            hi = "]" if self.closed in ("right", "both") else ")"
            where = f"in {lo}{self.left}, {self.right}{hi}"
            return f"{kind} {where}" if self.type is numbers.Integral else where
        if self.left is not None:
            return f"{kind} {'>=' if self.closed in ('left', 'both') else '>'} {self.left}"
        if self.right is not None:
            return f"{kind} {'<=' if self.closed in ('right', 'both') else '<'} {self.right}"
        return kind


class StrOptions(Constraint):
    """One of the given strings."""

    def __init__(self, options):
        self.options = tuple(options)

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, str) and value in self.options

    def descriptions(self) -> list[str]:
        reprs = [repr(o) for o in self.options]
        return [f"one of {', '.join(reprs)}"] if len(reprs) > 2 else reprs

    def __str__(self) -> str:
        return " or ".join(self.descriptions())


class Boolean(Constraint):
    """``True`` or ``False`` (Python or NumPy booleans)."""

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, (bool, np.bool_))

    def __str__(self) -> str:
        return "a bool"


class Text(Constraint):
    """Values accepted by a predicate, described by a text."""

    def __init__(self, predicate, text):
        self.predicate, self.text = predicate, text

    def is_satisfied_by(self, value) -> bool:
        return bool(self.predicate(value))

    def __str__(self) -> str:
        return self.text


class SequenceOf(Constraint):
    """A list, tuple or 1-D array (not a str) whose items all satisfy ``item``."""

    def __init__(self, item, text, *, allow_empty=False):
        self.item, self.text, self.allow_empty = item, text, allow_empty

    def is_satisfied_by(self, value) -> bool:
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                return False
        elif not isinstance(value, (list, tuple)):
            return False
        if not len(value):
            return self.allow_empty
        return all(self.item(v) for v in value)

    def __str__(self) -> str:
        return self.text


def _satisfied(constraint, value) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, (type, tuple)):
        return isinstance(value, constraint)
    return constraint.is_satisfied_by(value)


def _descriptions(constraint) -> list[str]:
    if constraint is None:
        return ["None"]
    if isinstance(constraint, (type, tuple)):
        types = constraint if isinstance(constraint, tuple) else (constraint,)
        return [f"a {' or '.join(t.__name__ for t in types)}"]
    return constraint.descriptions()


def describe(constraints) -> str:
    """What a list of constraints accepts, in words: ``"'auto', None or an integer >= 0"``."""
    items = [d for c in constraints for d in _descriptions(c)]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def validate_params(estimator) -> None:
    """Check every parameter of ``estimator`` against its ``_parameter_constraints``.

    Raises
    ------
    InvalidParameterError
        For the first parameter whose value satisfies none of its constraints, naming it, what
        it accepts and the value given.
    """
    params = estimator.get_params(deep=False)
    for name, constraints in type(estimator)._parameter_constraints.items():
        value = params[name]
        if not any(_satisfied(c, value) for c in constraints):
            raise InvalidParameterError(f"{name} must be {describe(constraints)}, got {value!r}")


#: The side of the square frame (the model input): one rule for every estimator; a model may
#: need more (its patch size), checked when it loads.
IMAGE_SIZE = Interval(numbers.Integral, 1, None, closed="left")

PATH = (str, os.PathLike)

#: ``random_state``: what :func:`sklearn.utils.check_random_state` accepts.
RANDOM_STATE = Text(
    lambda v: v is None or isinstance(v, np.random.RandomState)
    or (_is_int(v) and 0 <= v < 2**32),
    "None, an integer in [0, 2**32 - 1] or a numpy.random.RandomState",
)
