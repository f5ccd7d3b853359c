"""The Hugging Face transformers backend ('hf:'): tiny random-weight DINOv2 / DINOv2 with
registers / DINOv3 models built from their configs, checked against oracles computed here from
the models' own weights and outputs, and against timm holding the same weights."""

import math

import numpy as np
import pytest
import torch
import transformers
from conftest import make_timm, random_images

from sk_a2 import AttentionCropper, CropEmbedder, list_models
from sk_a2.attention import cls_attention
from sk_a2.backends import backend_for_module
from sk_a2.backends.hub import WeightsUnavailableError
from sk_a2.backends.transformers import model_type_available
from sk_a2.cli.common import model_extra, model_patch_size
from sk_a2.models import clear_model_cache, load_model, resolve_model_spec

SIZE = 56  # a 4 x 4 grid of 14-pixel patches
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
            patch_size=14, layer_norm_eps=1e-6)
FAMILIES = ["dinov2", "dinov2_registers"] + (["dinov3"] if model_type_available("dinov3_vit")
                                             else [])


def randomize(module, seed, std=0.3):
    """Weights far from the initialisation, so that attention is far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # norm weights (all ones) stay around 1
            base = 1.0 if p.ndim == 1 and bool((p == 1).all()) else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=gen))
    return module.eval()


def make_hf(family, seed=0):
    if family == "dinov2":
        config = transformers.Dinov2Config(**TINY)
        cls = transformers.Dinov2Model
    elif family == "dinov2_registers":
        config = transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=2)
        cls = transformers.Dinov2WithRegistersModel
    else:
        config = transformers.DINOv3ViTConfig(**TINY, intermediate_size=64, num_register_tokens=2)
        cls = transformers.DINOv3ViTModel
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return randomize(cls(config), seed)


def pixels(n=2, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def projections(attention):
    """The q and k linear layers of a block (``q_proj`` / ``k_proj``, or ``attention.query`` /
    ``attention.key`` in older transformers releases)."""
    if hasattr(attention, "q_proj"):
        return attention.q_proj, attention.k_proj
    return attention.attention.query, attention.attention.key


def direct_cls_softmax(model, x, block):
    """softmax(q_cls · Kᵀ / √d) of every head at ``block``, from the model's weights and the
    block's input (its hidden states, taken from ``output_hidden_states``)."""
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        layers = model.encoder.layer if hasattr(model, "encoder") else model.model.layer
        layer = layers[block]
        h = layer.norm1(out.hidden_states[block]).double()
        heads = model.config.num_attention_heads
        q_lin, k_lin = projections(layer.attention)
        q = h @ q_lin.weight.double().T
        k = h @ k_lin.weight.double().T
        if q_lin.bias is not None:
            q = q + q_lin.bias.double()
        if k_lin.bias is not None:
            k = k + k_lin.bias.double()
        B, N, C = h.shape
        d = C // heads
        q = q.reshape(B, N, heads, d).transpose(1, 2)
        k = k.reshape(B, N, heads, d).transpose(1, 2)
        if hasattr(model, "rope_embeddings"):  # DINOv3: rotate the patch keys
            cos, sin = (t.double() for t in model.rope_embeddings(x))
            npt = N - cos.shape[0]
            kp = k[:, :, npt:]
            k = torch.cat([k[:, :, :npt], kp * cos + rotate_half(kp) * sin], 2)
        logits = (q[:, :, :1] @ k.transpose(-1, -2))[:, :, 0] / math.sqrt(d)
        return logits.softmax(-1).float(), out


@pytest.fixture(autouse=True)
def _fresh_models():
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_maps_equal_a_direct_softmax(family):
    model = make_hf(family)
    vm = load_model(model, image_size=SIZE, device="cpu")
    assert vm.library == "hf" and vm.grid_size == (4, 4) and vm.num_layers == 2
    assert vm.num_prefix_tokens == (1 if family == "dinov2" else 3)
    x = pixels()
    for block in range(2):
        expected, out = direct_cls_softmax(model, vm.normalize(x), block)
        got = cls_attention(vm, vm.normalize(x), block)
        assert got.shape == (2, 2, 16 + vm.num_prefix_tokens)
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
        with torch.no_grad():  # and transformers' own (eager) attention probabilities
            own = model(pixel_values=vm.normalize(x), output_attentions=True).attentions[block]
        torch.testing.assert_close(got, own[:, :, 0], atol=2e-6, rtol=0)
    assert not torch.allclose(got, torch.full_like(got, 1 / got.shape[-1]), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_equal_the_model_cls_output(family):
    model = make_hf(family, seed=1)
    vm = load_model(model, image_size=SIZE, device="cpu")
    x = vm.normalize(pixels(3))
    with torch.no_grad():
        out = model(pixel_values=x)
    torch.testing.assert_close(vm.embed(x), out.pooler_output, atol=0, rtol=0)
    torch.testing.assert_close(vm.embed(x), out.last_hidden_state[:, 0], atol=0, rtol=0)
    X = random_images(2, SIZE, SIZE)
    full = CropEmbedder(model, image_size=SIZE, device="cpu").fit(X).transform(X)
    with torch.no_grad():
        ref = model(pixel_values=vm.normalize(torch.from_numpy(X).permute(0, 3, 1, 2) / 255.0))
    np.testing.assert_allclose(full, ref.pooler_output.numpy(), atol=1e-5)


def timm_to_transformers(state, depth, fused_names):
    """A timm DINOv2 ViT's state dict in the layout of transformers' Dinov2Model
    (``q_proj`` ... ``o_proj`` when ``fused_names``, else the older ``attention.attention.query``
    ... ``attention.output.dense``)."""
    names = (("q_proj", "k_proj", "v_proj", "o_proj") if fused_names else
             ("attention.query", "attention.key", "attention.value", "output.dense"))
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", f"attention.{names[3]}"),
                     ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            out[dst + b + ".weight"] = state[src + a + ".weight"]
            out[dst + b + ".bias"] = state[src + a + ".bias"]
        for j, name in enumerate(names[:3]):
            out[dst + f"attention.{name}.weight"] = state[src + "attn.qkv.weight"].chunk(3)[j]
            out[dst + f"attention.{name}.bias"] = state[src + "attn.qkv.bias"].chunk(3)[j]
        out[dst + "layer_scale1.lambda1"] = state[src + "ls1.gamma"]
        out[dst + "layer_scale2.lambda1"] = state[src + "ls2.gamma"]
    return out


@pytest.fixture(scope="module")
def twins():
    """A tiny timm DINOv2 ViT and the transformers Dinov2Model holding the same weights."""
    timm_model = randomize(make_timm("vit_small_patch14_dinov2", SIZE, 0, embed_dim=32, depth=2,
                                     num_heads=2), seed=2, std=0.2)
    hf = transformers.Dinov2Model(transformers.Dinov2Config(**TINY)).eval()
    fused_names = any(".q_proj." in k for k in hf.state_dict())
    missing, unexpected = hf.load_state_dict(
        timm_to_transformers(timm_model.state_dict(), 2, fused_names), strict=False)
    assert missing == ["embeddings.mask_token"] and unexpected == []
    return timm_model, hf


def test_timm_and_transformers_give_the_same_boxes(twins):
    timm_model, hf = twins
    x = pixels(2, seed=3)
    with torch.no_grad():  # the conversion is right: the same network
        torch.testing.assert_close(hf(pixel_values=x).last_hidden_state,
                                   timm_model.forward_features(x), atol=1e-4, rtol=1e-4)
    X = random_images(4, 70, 84, seed=4)
    params = dict(image_size=SIZE, crop_sizes=(28, 14), n_crops=2, device="cpu")
    a = AttentionCropper(timm_model, **params).fit()
    b = AttentionCropper(hf, **params).fit()
    np.testing.assert_allclose(b.attention_maps(X), a.attention_maps(X), atol=1e-5)
    assert a.attention_maps(X).std() > 1e-3  # not uniform: the boxes mean something
    cs_a, cs_b = a.transform(X), b.transform(X)
    np.testing.assert_array_equal(cs_b.boxes, cs_a.boxes)
    emb_a = CropEmbedder(timm_model, image_size=SIZE, device="cpu").fit(cs_a).transform(cs_a)
    emb_b = CropEmbedder(hf, image_size=SIZE, device="cpu").fit(cs_b).transform(cs_b)
    np.testing.assert_allclose(emb_b, emb_a, atol=1e-4)


def test_a_saved_folder_loads_through_weights(twins, tmp_path):
    _, hf = twins
    folder = tmp_path / "tiny-dinov2"
    hf.save_pretrained(folder)
    X = random_images(3, 60, 50, seed=5)
    params = dict(image_size=SIZE, crop_sizes=(28,), device="cpu")
    by_name = AttentionCropper("hf:me/tiny-dinov2", weights=str(folder), **params).fit()
    assert by_name.weights_digest_ is not None
    module = AttentionCropper(hf, **params).fit()  # (its attention kernel may differ: sdpa)
    np.testing.assert_allclose(by_name.attention_maps(X), module.attention_maps(X), atol=1e-6)
    np.testing.assert_array_equal(by_name.transform(X).boxes, module.transform(X).boxes)
    vm = load_model("hf:me/tiny-dinov2", weights=folder, image_size=SIZE, device="cpu")
    assert vm.library == "hf" and vm.embed_dim == 32
    with pytest.raises(ValueError, match="multiple of the patch size"):
        load_model("hf:me/tiny-dinov2", weights=folder, image_size=50, device="cpu")


def test_names_and_cli_facts():
    names = list_models("hf_*")
    for size in "sblg":
        assert f"hf_dinov2_vit{size}14" in names and f"hf_dinov2_vit{size}14_reg" in names
    assert resolve_model_spec("hf_dinov2_vits14").arch == "facebook/dinov2-small"
    assert resolve_model_spec("hf_dinov2_vitg14_reg").arch == "facebook/dinov2-with-registers-giant"
    if model_type_available("dinov3_vit"):
        assert resolve_model_spec("hf_dinov3_vitl16").arch.startswith("facebook/dinov3-vitl16")
    spec = resolve_model_spec("hf:facebook/dinov2-small")
    assert (spec.library, spec.arch) == ("hf", "facebook/dinov2-small")
    assert model_extra("hf_dinov2_vits14") == "transformers"
    assert model_patch_size("hf_dinov2_vitb14") == 14
    for bad in ("hf:dinov2-small", "hf:a/b/c", "hf:/x", "hf:a b/c"):
        with pytest.raises(ValueError, match="look like 'hf:<owner>/<name>'"):
            resolve_model_spec(bad)
    assert backend_for_module(make_hf("dinov2")).name == "hf"


def test_missing_checkpoints_and_bad_folders_are_clear(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError, match="not in the local Hugging Face cache"):
        load_model("hf:facebook/dinov2-small", image_size=SIZE, device="cpu")
    empty = tmp_path / "no-model"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a folder; expected .* saved model folder"):
        load_model("hf:me/tiny", weights=empty, image_size=SIZE, device="cpu")
    folder = tmp_path / "tiny"
    make_hf("dinov2").save_pretrained(folder)
    with pytest.raises(ValueError, match="saved model folder, which only 'hf:' models load"):
        load_model("timm:vit_small_patch14_dinov2", weights=folder, image_size=SIZE,
                   device="cpu")
    state = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file(make_hf("dinov2").state_dict(), str(state))
    with pytest.raises(ValueError, match="does not fit model 'hf_dinov2_vits14'"):
        load_model("hf_dinov2_vits14", weights=state, image_size=SIZE, device="cpu")


def test_without_transformers_the_extra_is_named(monkeypatch, tmp_path):
    import importlib.util

    folder = tmp_path / "tiny"
    make_hf("dinov2").save_pretrained(folder)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(ImportError, match=r'pip install "sk-a2\[transformers\]"'):
        load_model("hf:me/tiny", weights=folder, image_size=SIZE, device="cpu")
