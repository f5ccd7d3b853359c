import time

import open_clip
import pytest
import timm
import torch
from conftest import make_clip, make_timm

from sk_a2 import list_models
from sk_a2.models import (
    WeightsUnavailableError,
    clear_model_cache,
    load_model,
    resolve_model_spec,
)

REQUIRED = (
    "dino_vits16 dino_vits8 dino_vitb16 dino_vitb8 dinov2_vits14 dinov2_vitb14 dinov2_vitl14 "
    "dinov2_vitg14 dinov2_vits14_reg dinov2_vitb14_reg dinov2_vitl14_reg dinov2_vitg14_reg "
    "dinov3_vits16 dinov3_vitb16 dinov3_vitl16 mae_vitb16 mae_vitl16 mae_vith14 openclip_vitb16 "
    "openclip_vitl14 imgfocus_vits14"
).split()


def test_list_models_has_the_paper_models():
    names = list_models()
    assert set(REQUIRED) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", REQUIRED)
def test_each_name_maps_to_a_real_checkpoint(name):
    spec = resolve_model_spec(name)
    if spec.library == "timm":
        cfgs = timm.models.get_arch_pretrained_cfgs(spec.arch)
        assert spec.arch in cfgs, spec.arch
        assert cfgs[spec.arch].hf_hub_id or cfgs[spec.arch].url
    elif spec.library == "open_clip":
        assert open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    else:
        assert timm.is_model(spec.arch)


def test_paper_openclip_checkpoint():
    spec = resolve_model_spec("openclip_vitl14")
    assert (spec.arch, spec.pretrained) == ("ViT-L-14", "laion2b_s32b_b82k")


def test_prefixed_names():
    assert resolve_model_spec("timm:vit_tiny_patch16_224").arch == "vit_tiny_patch16_224"
    spec = resolve_model_spec("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert (spec.library, spec.arch, spec.pretrained) == ("open_clip", "ViT-B-32",
                                                          "laion2b_s34b_b79k")


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match="dinov2_vits14"):
        resolve_model_spec("dinov2_vit14")
    with pytest.raises(ValueError, match="open_clip:<arch>:<pretrained>"):
        resolve_model_spec("open_clip:ViT-B-32")
    with pytest.raises(ValueError, match="timm has no model"):
        load_model("timm:not_a_model_at_all", image_size=64, device="cpu")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_weights_file_round_trip(tmp_path, suffix):
    src = make_timm("test_vit", img_size=160, seed=3)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    vm = load_model("timm:test_vit", weights=path, image_size=160, device="cpu")
    for (k, a), b in zip(src.state_dict().items(), vm.module.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(vm.embed(x), src.eval().forward_features(x)[:, 0])


def test_weights_go_through_the_checkpoint_filter(tiny_vit_file):
    """A 160-px checkpoint loads at 64 px: timm resamples the position embeddings."""
    vm = load_model("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu")
    assert vm.grid_size == (4, 4)
    assert vm.module.pos_embed.shape[1] == 1 + 16


def test_open_clip_weights_file(tmp_path):
    model = make_clip(seed=4)
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    vm = load_model("open_clip:SkA2-Tiny:", weights=path, image_size=64, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vm.embed(x), model.encode_image(x))
    assert vm.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(3)}, path)
    with pytest.raises((ValueError, RuntimeError)):
        load_model("timm:test_vit", weights=path, image_size=64, device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("timm:test_vit", weights=tmp_path / "missing.pth", device="cpu")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="state dict"):
        load_model("timm:test_vit", weights=tmp_path / "w.txt", device="cpu")


@pytest.mark.parametrize("name", ["dinov2_vits14", "openclip_vitl14", "timm:test_vit"])
def test_offline_error_is_fast_and_helpful(name, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_model(name, image_size=224, device="cpu")
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert name in msg and "weights=" in msg and "checkpoint" in msg
    assert "cache" in msg


def test_one_copy_per_model_shared():
    clear_model_cache()
    a = load_model("imgfocus_vits14", image_size=56, device="cpu")
    b = load_model("imgfocus_vits14", image_size=56, device="cpu")
    c = load_model("imgfocus_vits14", image_size=112, device="cpu")
    assert a is b and a is not c


def test_module_passed_in_is_not_mutated():
    module = make_timm("test_vit", img_size=160)
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    vm = load_model(module, image_size=64, device="cpu")
    assert module.training and vm.module is not module and not vm.module.training
    assert module.patch_embed.img_size == (160, 160)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])
    module.eval()
    assert load_model(module, image_size=160, device="cpu").module is module


def test_mean_std_from_the_checkpoint_config():
    vm = load_model("imgfocus_vits14", image_size=56, device="cpu")
    assert vm.mean == pytest.approx((0.485, 0.456, 0.406))
    module = make_timm("test_vit", img_size=64)
    module.pretrained_cfg = {**module.pretrained_cfg, "mean": (0.5, 0.5, 0.5),
                             "std": (0.25, 0.25, 0.25)}
    vm = load_model(module.eval(), image_size=64, device="cpu")
    assert vm.mean == (0.5, 0.5, 0.5) and vm.std == (0.25, 0.25, 0.25)


def test_not_a_vit():
    with pytest.raises(ValueError, match="vision transformer|timm ViT"):
        load_model(torch.nn.Linear(3, 3), device="cpu")
