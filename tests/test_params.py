"""Parameter rules: every bad value of every public estimator gets an error naming it."""

import numbers
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import make_clip, random_images

import sk_a2._param_validation as pv
from sk_a2 import (
    AttentionCropper,
    CenterCropper,
    CropEmbedder,
    DFRClassifier,
    RandomCropper,
    ZeroShotCLIPClassifier,
)
from sk_a2.device import resolve_device

# Values each parameter rejects; each must fail in ``fit`` with scikit-learn's "The '<name>'
# parameter of <class> must be .... Got <repr> instead."
COMMON_MODEL_BAD = {
    "model": [3, None, ["timm:test_vit"]],
    "weights": [3, ["w.safetensors"]],
    "image_size": [0, -5, 64.0, True, "64", None],
    "batch_size": [0, 2.5, "8", False],
    "num_workers": [-1, "many", 1.5, None],
    "device": ["meta", "gpu", "cuda:x", 0, None],
    "cache": [3, True, ["memory"]],
    "verbose": ["yes", 2, None],
}
CROP_BAD = {
    "crop_sizes": [0, (), (32, 0), (32, 2.5), "32", (True,), [[32]], None],
    "n_crops": [0, -1, 1.5, "2", True],
    "image_size": [0, -1, 32.0, "64", None, False],
}
BAD = {
    AttentionCropper: {**COMMON_MODEL_BAD, **CROP_BAD,
                       "head_aggregation": ["median", None, 1],
                       "layer": [1.5, "last", None],
                       "decoder": ["nvjpeg", None, 1, "CUDA"]},
    CropEmbedder: {**COMMON_MODEL_BAD, "include_full_image": ["yes", None, 1],
                   "decoder": ["nvjpeg", None, 1]},
    CenterCropper: CROP_BAD,
    RandomCropper: {**CROP_BAD, "random_state": ["0", 1.5, -1, 2**32]},
    DFRClassifier: {
        "mode": ["test", None, 1],
        "C_grid": ["abc", (), (1.0, -0.1), (0.0,), 1.0, [["a"]], (float("nan"),), (True,)],
        "class_weight_grid": ["balanced", [], ["uniform"], 3],
        "n_retrains": [0, 2.5, "20", None],
        "tune_fraction": [0, 1, 1.5, "half", float("nan")],
        "random_state": ["seed", 0.5],
    },
    ZeroShotCLIPClassifier: {**COMMON_MODEL_BAD,
                             "classnames": ["ab", [1, 2], 3],
                             "templates": [3, [None], None],
                             "crop_aggregation": ["median", None]},
}
CASES = [(cls, name, value) for cls, params in BAD.items() for name, values in params.items()
         for value in values]


def _fit(est, tiny_vit_file):
    X = random_images(4, 64, 64)
    y = np.array([0, 1, 0, 1])
    if isinstance(est, DFRClassifier):
        return est.fit(np.random.RandomState(0).randn(40, 3), np.arange(40) % 2)
    if isinstance(est, ZeroShotCLIPClassifier):
        return est.fit(X, y)
    return est.fit(X)


def _make(cls, tiny_vit_file, **params):
    if cls in (AttentionCropper, CropEmbedder):
        base = dict(model="timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu")
        if cls is AttentionCropper:
            base["crop_sizes"] = (32,)
    elif cls is ZeroShotCLIPClassifier:
        base = dict(model=make_clip(seed=0), image_size=64, device="cpu")
    else:
        base = {}
    return cls(**{**base, **params})


@pytest.mark.parametrize("cls, name, value", CASES,
                         ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v in CASES])
def test_bad_value_names_the_parameter(cls, name, value, tiny_vit_file):
    est = _make(cls, tiny_vit_file, **{name: value})
    with pytest.raises(ValueError, match=rf"^The '{name}' parameter of {cls.__name__} must be .+\. "
                                         rf"Got {re.escape(repr(value))} instead\.$"):
        _fit(est, tiny_vit_file)


@pytest.mark.parametrize("cls", list(BAD))
def test_every_parameter_has_a_rule_and_defaults_pass(cls):
    assert set(cls._parameter_constraints) == set(cls().get_params(deep=False))
    cls()._validate_params()  # the defaults are valid


def test_errors_are_scikit_learns_parameter_errors():
    validator = pytest.importorskip("sklearn.utils._param_validation")
    with pytest.raises(validator.InvalidParameterError,
                       match="^The 'n_retrains' parameter of DFRClassifier must be"):
        DFRClassifier(n_retrains=0).fit(np.eye(4), [0, 1, 0, 1])


def test_messages_say_what_is_accepted(tiny_vit_file):
    with pytest.raises(ValueError, match=r"'C_grid' parameter of DFRClassifier must be a non-empty "
                                         r"sequence of C > 0, each finite\. Got 'ab' instead"):
        DFRClassifier(C_grid="ab").fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"'num_workers' parameter of CropEmbedder must be a str "
                                         r"among \{'auto'\} or an int in the range \[0, inf\)"):
        _fit(_make(CropEmbedder, tiny_vit_file, num_workers=-1), tiny_vit_file)
    with pytest.raises(ValueError, match=r"'device' parameter of CropEmbedder must be 'auto', "
                                         r"'cpu', 'cuda', 'cuda:N' or"):
        _fit(_make(CropEmbedder, tiny_vit_file, device="meta"), tiny_vit_file)


def test_set_params_after_fit_is_checked_in_transform(tiny_vit_file):
    X = random_images(2, 64, 64)
    for est in (_make(AttentionCropper, tiny_vit_file), CenterCropper(crop_sizes=(32,)),
                _make(CropEmbedder, tiny_vit_file)):
        est.fit(X).set_params(image_size=0)
        with pytest.raises(ValueError, match=rf"^The 'image_size' parameter of {type(est).__name__}"
                                             r" must be an int in the range \[1, inf\)\. "
                                             r"Got 0 instead\.$"):
            est.transform(X)


def test_one_image_size_rule():
    """Every estimator and load_model share the same image_size lower bound."""
    from sk_a2.models import load_model

    for cls in BAD:
        if "image_size" in cls._parameter_constraints:
            assert cls._parameter_constraints["image_size"] == [pv.IMAGE_SIZE]
    with pytest.raises(ValueError, match=r"^The 'image_size' parameter of load_model must be an "
                                         r"int in the range \[1, inf\)\. Got 0 instead\.$"):
        load_model("timm:test_vit", image_size=0, device="cpu")


# ------------------------------------------------------------------------------- device


@pytest.mark.parametrize("device_type", ["cuda", "mps"])
@pytest.mark.parametrize("cls", [AttentionCropper, CropEmbedder, ZeroShotCLIPClassifier])
def test_unavailable_device_fails_in_fit_naming_device(cls, device_type, tiny_vit_file,
                                                       monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    est = _make(cls, tiny_vit_file, device=device_type)
    with pytest.raises(ValueError, match=rf"device='{device_type}' was requested but "
                                         rf"{device_type.upper()} is not available"):
        _fit(est, tiny_vit_file)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for bad in ("meta", "cuda:", "CPU", "xla"):
        with pytest.raises(ValueError, match="device must be"):
            resolve_device(bad)


def _cuda_pickle(est, monkeypatch):
    """Pickle ``est`` with device='cuda', as written on a machine with CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    data = pickle.dumps(est.set_params(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return data


@pytest.mark.parametrize("cls", [AttentionCropper, CropEmbedder])
def test_cuda_pickle_runs_on_cpu_with_a_warning(cls, tiny_vit_file, monkeypatch):
    X = random_images(3, 64, 64)
    est = _make(cls, tiny_vit_file)
    if cls is CropEmbedder:
        cs = CenterCropper(crop_sizes=(32,), image_size=64).fit_transform(X)
        ref, X = est.fit(cs).transform(cs), cs
    else:
        ref = est.fit(X).transform(X).boxes
    data = _cuda_pickle(est, monkeypatch)
    with pytest.warns(UserWarning, match=r"device='cuda' but CUDA is not available here; it "
                                         r"runs on device='cpu'"):
        loaded = pickle.loads(data)
    assert loaded.device == "cpu"
    out = loaded.transform(X)
    np.testing.assert_array_equal(out if cls is CropEmbedder else out.boxes, ref)


def test_cuda_pickle_keeps_cuda_where_available(tiny_vit_file, monkeypatch):
    est = _make(AttentionCropper, tiny_vit_file, device="cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pickle.loads(pickle.dumps(est)).device == "cuda:0"
    for device in ("auto", "cpu"):  # nothing to fall back from
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert pickle.loads(pickle.dumps(est.set_params(device=device))).device == device


# ------------------------------------------------------------------------- scikit-learn's validator


def test_package_constraints_go_through_scikit_learns_validator():
    """The kinds scikit-learn lacks are constraints its own validator takes and describes."""
    from sklearn.utils._param_validation import (
        InvalidParameterError,
        validate_parameter_constraints,
    )

    constraints = {"n": [pv.Interval(numbers.Integral, 1, None, closed="left")],
                   "kind": [pv.StrOptions(["b", "a"]), None],
                   "sizes": [pv.SequenceOf(lambda v: v > 0, "a sequence of positive numbers")]}
    validate_parameter_constraints(constraints, {"n": 2, "kind": None, "sizes": [1]}, "f")
    for params, message in [
        ({"n": True}, "The 'n' parameter of f must be an int in the range [1, inf). Got True"),
        ({"kind": "c"}, "The 'kind' parameter of f must be a str among {'b', 'a'} or None. "
                        "Got 'c' instead."),
        ({"sizes": [1, 0]}, "The 'sizes' parameter of f must be a sequence of positive "
                            "numbers. Got [1, 0] instead."),
    ]:
        with pytest.raises(InvalidParameterError) as info:
            validate_parameter_constraints(constraints, params, "f")
        assert str(info.value).startswith(message)
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
