"""The ``precision`` parameter, the native-bf16 check, and the shared full-image forward."""

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, make_timm
from sklearn.base import clone

import sk_a2.embedder
import sk_a2.precision
from sk_a2 import AttentionCropper, CropEmbedder, CropSet
from sk_a2.cache import memory_cache
from sk_a2.images import load_resized
from sk_a2.models import load_model
from sk_a2.precision import (
    SlowPrecisionWarning,
    at_precision,
    check_precision,
    has_native_bf16,
    resolve_precision,
)
from sk_a2.precision import native_bf16 as real_native_bf16  # before conftest patches it

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native(monkeypatch):
    """A CPU with native bf16 (the conftest default is one without)."""
    monkeypatch.setattr(sk_a2.precision, "native_bf16", lambda: True)


def _kw(weights, **extra):
    return dict(weights=weights, image_size=64, device="cpu", batch_size=4, **extra)


def _crops_and_embeddings(weights, precision, embedder_precision=None, share=False,
                          include_full=False, X=None, **cropper_kw):
    X = blob_images(5, seed=3)[0] if X is None else X
    cs = AttentionCropper("timm:test_vit", crop_sizes=(32, 16), precision=precision,
                          embed_full_image=share, **_kw(weights), **cropper_kw).fit().transform(X)
    emb = CropEmbedder("timm:test_vit", precision=embedder_precision or precision,
                       include_full_image=include_full, **_kw(weights))
    return cs, emb.fit(cs).transform(cs)


def _direct_cls(weights, X, precision):
    """The oracle: the timm model's full-image CLS tokens of ``X`` (n, d) float32, computed
    directly, by a plain ``deepcopy(module).bfloat16()`` for ``"bfloat16"``."""
    vm = load_model("timm:test_vit", weights=weights, image_size=64, device="cpu")
    module = vm.module if precision == "float32" else copy.deepcopy(vm.module).bfloat16()
    pixels = torch.stack([torch.tensor(load_resized(x, 64)[0]) for x in X])
    x = (pixels.permute(0, 3, 1, 2).float() / 255 - torch.tensor(vm.mean).view(1, 3, 1, 1)) \
        / torch.tensor(vm.std).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = module.forward_features(x.to(next(module.parameters()).dtype))[:, 0]
    return direct.float().numpy()


# ---- resolution and capability ------------------------------------------------------------------


class _Placed:
    """Stands for a loaded model on ``device`` (only what ``at_precision`` reads)."""

    def __init__(self, device):
        self.device = device

    def to_dtype(self, dtype):
        return (self, dtype)


def test_float32_context_on_cuda_switches_tf32_off_and_restores():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = True
    try:
        on_cuda = _Placed(CUDA)
        with at_precision(on_cuda, "float32") as model:
            assert model == (on_cuda, torch.float32)
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
        with at_precision(_Placed(CPU), "float32"):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
        with at_precision(on_cuda, "bfloat16") as model:  # a bf16 model has no TF32 to switch
            assert model == (on_cuda, torch.bfloat16)
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before
    with pytest.raises(ValueError, match="resolved precision"), at_precision(on_cuda, "auto"):
        pass


# ---- the bf16 copy of a model -----------------------------------------------------------------


def test_bf16_copy_is_made_once_and_leaves_the_model_alone(tiny_vit_file):
    vm = load_model("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu")
    before = {k: v.clone() for k, v in vm.module.state_dict().items()}
    bf = vm.to_dtype(torch.bfloat16)
    assert vm.to_dtype(torch.float32) is vm and vm.to_dtype(torch.bfloat16) is bf
    assert bf.module is not vm.module and bf.dtype == torch.bfloat16 and vm.dtype == torch.float32
    after = vm.module.state_dict()
    for name, value in before.items():  # the float32 model is untouched
        assert after[name].dtype == value.dtype
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)
    for name, value in bf.module.state_dict().items():  # the copy: the same weights, in bf16
        expected = before[name].to(torch.bfloat16) if before[name].is_floating_point() \
            else before[name]
        assert value.dtype == expected.dtype, name
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    # its anatomy is its own: the hooks of an attention pass go on the copy's blocks
    assert all(a is not b for a, b in zip(bf.attn_modules, vm.attn_modules))
    assert all(any(a is m for m in bf.module.modules()) for a in bf.attn_modules)
    assert bf.normalize(torch.rand(1, 3, 64, 64)).dtype == torch.bfloat16


def test_bf16_embeddings_equal_a_bf16_model_run_directly(tiny_vit_file):
    X = blob_images(4, seed=11)[0]
    emb = CropEmbedder("timm:test_vit", precision="bfloat16", **_kw(tiny_vit_file))
    with pytest.warns(SlowPrecisionWarning):
        got = emb.fit(X).transform(X)
    np.testing.assert_allclose(got, _direct_cls(tiny_vit_file, X, "bfloat16"), rtol=0, atol=1e-6)


def test_a_module_passed_in_stays_float32(tiny_vit_file):
    module = make_timm().eval()
    params = {k: v.clone() for k, v in module.state_dict().items()}
    X = blob_images(3, seed=5)[0]
    with pytest.warns(SlowPrecisionWarning):
        out = CropEmbedder(module, precision="bfloat16", image_size=64, device="cpu",
                           batch_size=4).fit(X).transform(X)
    assert np.isfinite(out).all()
    for name, value in module.state_dict().items():
        assert value.dtype == params[name].dtype
        torch.testing.assert_close(value, params[name], rtol=0, atol=0)


def test_auto_stays_float32_without_native_bf16():
    # conftest forces the capability check to "no native bf16"
    assert resolve_precision("auto", CPU, "attention") == "float32"
    assert resolve_precision("auto", CPU, "embedding") == "float32"
    assert resolve_precision("auto", CUDA, "attention") == "float32"
    assert resolve_precision("auto", CUDA, "embedding") == "bfloat16"
    assert resolve_precision("bfloat16", CPU) == "bfloat16"
    assert resolve_precision("float32", CUDA) == "float32"


def test_auto_with_native_bf16_keeps_attention_float32(native):
    assert resolve_precision("auto", CPU, "attention") == "float32"
    assert resolve_precision("auto", CPU, "embedding") == "bfloat16"


def test_auto_without_native_equals_float32_bitwise(tiny_vit_file):
    _, auto = _crops_and_embeddings(tiny_vit_file, "auto")
    _, f32 = _crops_and_embeddings(tiny_vit_file, "float32")
    np.testing.assert_array_equal(auto, f32)


def test_auto_with_native_embeds_in_bf16_and_keeps_boxes(native, tiny_vit_file):
    cs_auto, auto = _crops_and_embeddings(tiny_vit_file, "auto")
    cs_bf, bf = _crops_and_embeddings(tiny_vit_file, "float32", embedder_precision="bfloat16")
    cs_32, f32 = _crops_and_embeddings(tiny_vit_file, "float32")
    np.testing.assert_array_equal(cs_auto.boxes, cs_32.boxes)  # attention stays float32
    np.testing.assert_array_equal(auto, bf)  # embeddings in bf16
    assert not np.array_equal(auto, f32)
    np.testing.assert_allclose(auto, f32, atol=0.1 * np.abs(f32).max())


@pytest.mark.parametrize("flags, expected", [
    ({"avx512_bf16": True, "avx512_f": True}, True),
    ({"amx_bf16": True}, True),
    ({"bf16": True}, True),  # ARM
    ({"avx512_f": True, "avx512_bf16": False, "avx2": True}, False),
    ({}, False),
])
def test_has_native_bf16(flags, expected):
    assert has_native_bf16(flags) is expected


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs /proc/cpuinfo")
def test_native_bf16_agrees_with_proc_cpuinfo():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    expected = bool(flags & {"avx512_bf16", "amx_bf16", "bf16", "sve_bf16"})
    assert real_native_bf16() is expected


def test_precision_is_checked_before_loading():
    for est in (AttentionCropper("no-such-model", precision="fp16"),
                CropEmbedder("no-such-model", precision="half")):
        with pytest.raises(ValueError, match="'precision' parameter of .* must be a str among"):
            est.fit(blob_images(2)[0])
    with pytest.raises(ValueError, match="precision"):
        check_precision(None)


def test_forced_bfloat16_without_native_warns_and_works(tiny_vit_file):
    with pytest.warns(SlowPrecisionWarning, match="slower than float32"):
        cs, bf = _crops_and_embeddings(tiny_vit_file, "bfloat16")
    _, f32 = _crops_and_embeddings(tiny_vit_file, "float32", X=None)
    assert bf.shape == f32.shape and np.isfinite(bf).all()
    cos = (bf * f32).sum(1) / np.linalg.norm(bf, axis=1) / np.linalg.norm(f32, axis=1)
    assert cos.min() > 0.99


def test_bfloat16_with_native_does_not_warn(native, tiny_vit_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPrecisionWarning)
        _crops_and_embeddings(tiny_vit_file, "bfloat16")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_reruns_are_bit_identical(native, tiny_vit_file, precision):
    cs1, e1 = _crops_and_embeddings(tiny_vit_file, precision)
    cs2, e2 = _crops_and_embeddings(tiny_vit_file, precision)
    np.testing.assert_array_equal(cs1.boxes, cs2.boxes)
    np.testing.assert_array_equal(e1, e2)


def test_precision_is_a_clonable_parameter():
    est = CropEmbedder("timm:test_vit", precision="bfloat16")
    assert clone(est).get_params()["precision"] == "bfloat16"
    assert AttentionCropper().set_params(precision="float32").precision == "float32"


# ---- cache keys -------------------------------------------------------------------------------


def test_cache_keys_differ_by_precision(native, tiny_vit_file):
    memory_cache().clear()
    X = blob_images(4, seed=7)[0]
    cropper = AttentionCropper("timm:test_vit", crop_sizes=(32,), cache="memory",
                               **_kw(tiny_vit_file))
    cropper.fit()
    keys32 = cropper.set_params(precision="float32")._map_keys(X)
    keys16 = cropper.set_params(precision="bfloat16")._map_keys(X)
    assert not set(keys32) & set(keys16)
    cs = cropper.transform(X)
    emb = {}
    for p in ("float32", "bfloat16", "float32"):  # the second float32 run reads the cache
        emb.setdefault(p, []).append(
            CropEmbedder("timm:test_vit", precision=p, cache="memory",
                         **_kw(tiny_vit_file)).fit(cs).transform(cs))
    fresh = {p: CropEmbedder("timm:test_vit", precision=p, **_kw(tiny_vit_file)).fit(cs)
             .transform(cs) for p in ("float32", "bfloat16")}
    np.testing.assert_array_equal(emb["bfloat16"][0], fresh["bfloat16"])
    np.testing.assert_array_equal(emb["float32"][1], fresh["float32"])
    assert not np.array_equal(fresh["float32"], fresh["bfloat16"])
    memory_cache().clear()


# ---- shared forward -----------------------------------------------------------------------------


@pytest.fixture
def count_embedded(monkeypatch):
    """How many images went through the embedder's own forward."""
    seen = []
    real = sk_a2.embedder._forward_embed

    def counting(vm, inputs, batch_size, precision):
        seen.append(len(inputs))
        return real(vm, inputs, batch_size, precision)

    monkeypatch.setattr(sk_a2.embedder, "_forward_embed", counting)
    return seen


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_shared_forward_equals_separate(native, tiny_vit_file, count_embedded, precision):
    X = blob_images(5, seed=3)[0]
    cs, separate = _crops_and_embeddings(tiny_vit_file, precision, include_full=True, X=X)
    assert sum(count_embedded) == 5 * 3
    count_embedded.clear()
    cs_shared, shared = _crops_and_embeddings(tiny_vit_file, precision, include_full=True,
                                              share=True, X=X)
    assert sum(count_embedded) == 5 * 2  # the full images came from the attention pass
    np.testing.assert_array_equal(cs_shared.boxes, cs.boxes)
    atol = 1e-5 if precision == "float32" else 0.05 * np.abs(separate).max()
    np.testing.assert_allclose(shared, separate, atol=atol, rtol=0)
    # the oracle: the model's own full-image CLS token, computed directly
    direct = _direct_cls(tiny_vit_file, X, precision)
    np.testing.assert_allclose(cs_shared.full_embeddings, direct, atol=atol, rtol=0)
    # indexing a CropSet keeps its embeddings aligned
    np.testing.assert_array_equal(cs_shared[[4, 1]].full_embeddings, direct[[4, 1]])


def test_shared_forward_not_used_for_another_model_or_precision(tiny_vit_file, tiny_vit_file2,
                                                               count_embedded):
    X = blob_images(3, seed=1)[0]
    cs = AttentionCropper("timm:test_vit", crop_sizes=(32,), embed_full_image=True,
                          precision="float32", **_kw(tiny_vit_file)).fit().transform(X)
    other = CropEmbedder("timm:test_vit", include_full_image=True, precision="float32",
                         **_kw(tiny_vit_file2)).fit(cs).transform(cs)
    assert sum(count_embedded) == 3 * 2
    plain = _without_embeddings(cs)
    expected = CropEmbedder("timm:test_vit", include_full_image=True, precision="float32",
                            **_kw(tiny_vit_file2)).fit(plain).transform(plain)
    np.testing.assert_array_equal(other, expected)
    count_embedded.clear()
    with pytest.warns(SlowPrecisionWarning):
        CropEmbedder("timm:test_vit", include_full_image=True, precision="bfloat16",
                     **_kw(tiny_vit_file)).fit(cs).transform(cs)
    assert sum(count_embedded) == 3 * 2


def test_shared_forward_through_the_cache(tiny_vit_file):
    memory_cache().clear()
    X = blob_images(3, seed=2)[0]
    cropper = AttentionCropper("timm:test_vit", crop_sizes=(32,), embed_full_image=True,
                               cache="memory", precision="float32", **_kw(tiny_vit_file))
    first = cropper.fit().transform(X)
    again = clone(cropper).fit().transform(X)  # boxes and embeddings read back
    np.testing.assert_array_equal(again.full_embeddings, first.full_embeddings)
    plain = clone(cropper).set_params(embed_full_image=False).fit().transform(X)
    assert plain.full_embeddings is None
    np.testing.assert_array_equal(plain.boxes, first.boxes)
    memory_cache().clear()


def test_embed_full_image_must_be_bool():
    with pytest.raises(ValueError, match="embed_full_image"):
        AttentionCropper("no-such-model", embed_full_image="yes").fit()


def _without_embeddings(cs):
    return CropSet(cs.images, cs.boxes, cs.scores, cs.image_sizes)
