"""iBOT short names: the released checkpoints' key layout, loaded through ``weights=``.

The checkpoints here are synthesized in iBOT's two released layouts from random timm ViT-S/16
weights (nothing is downloaded): the backbone file ``checkpoint_teacher.pth`` (a ``state_dict``
of the teacher backbone) and the full training checkpoint ``checkpoint.pth`` (``teacher`` with
``backbone.`` / ``head.`` keys, ``student`` under DDP's ``module.`` prefix with the masked-image
token ``masked_embed``, plus optimizer state and the argparse arguments).
"""

import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file

from sk_a2 import AttentionCropper, list_models
from sk_a2.models import WeightsUnavailableError, clear_model_cache, load_model, resolve_model_spec

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _vit_s(seed):
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()


def _head(seed, dim=384):
    """Keys of iBOT's projection head (iBOTHead), which the backbone does not use."""
    g = torch.Generator().manual_seed(seed)
    return {"mlp.0.weight": torch.randn(64, dim, generator=g), "mlp.0.bias": torch.zeros(64),
            "last_layer.weight_g": torch.ones(32, 1),
            "last_layer.weight_v": torch.randn(32, 64, generator=g)}


@pytest.fixture(scope="module")
def teacher():
    return {k: v.clone() for k, v in _vit_s(0).state_dict().items()}


@pytest.fixture(scope="module")
def student(teacher):
    return {k: v + 0.5 for k, v in teacher.items()}  # every tensor differs from the teacher's


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory, teacher):
    """``checkpoint_teacher.pth``: ``{"state_dict": teacher backbone}``."""
    path = tmp_path_factory.mktemp("ibot") / "checkpoint_teacher.pth"
    torch.save({"state_dict": dict(teacher)}, path)
    return path


@pytest.fixture(scope="module")
def full_file(tmp_path_factory, teacher, student):
    """``checkpoint.pth`` as iBOT's main_ibot.py saves it."""
    path = tmp_path_factory.mktemp("ibot_full") / "checkpoint.pth"
    student_sd = {f"module.backbone.{k}": v for k, v in student.items()}
    student_sd["module.backbone.masked_embed"] = torch.zeros(1, 384)
    student_sd.update({f"module.head.{k}": v for k, v in _head(2).items()})
    teacher_sd = {f"backbone.{k}": v for k, v in teacher.items()}
    teacher_sd.update({f"head.{k}": v for k, v in _head(3).items()})
    args = argparse.Namespace(arch="vit_small", patch_size=16, out_dim=8192, lr=0.0005,
                              use_masked_im_modeling=True, pred_ratio=[0.0, 0.3],
                              output_dir="/tmp/ibot", gpu=0, dist_url="env://")
    torch.save({"student": student_sd, "teacher": teacher_sd,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
                "epoch": 800, "args": args,
                "ibot_loss": {"center": torch.zeros(1, 32), "center2": torch.zeros(1, 1, 32)},
                "fp16_scaler": {"scale": 1024.0, "_growth_tracker": 10}}, path)
    return path


@pytest.fixture(autouse=True)
def _fresh_models():
    clear_model_cache()
    yield
    clear_model_cache()


def _state(vm):
    return {k: v.detach() for k, v in vm.module.state_dict().items()}


def _assert_exact(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_names_map_to_timm_vits():
    assert list_models("ibot_*") == ["ibot_vitb16", "ibot_vitl16", "ibot_vits16"]
    archs = {n: resolve_model_spec(n).arch for n in list_models("ibot_*")}
    assert archs == {"ibot_vits16": "vit_small_patch16_224",
                     "ibot_vitb16": "vit_base_patch16_224",
                     "ibot_vitl16": "vit_large_patch16_224"}


@pytest.mark.parametrize("name,folder", [("ibot_vits16", "vits_16"), ("ibot_vitb16", "vitb_16"),
                                         ("ibot_vitl16", "vitl_16")])
def test_without_weights_the_error_says_where_to_download(name, folder):
    with pytest.raises(WeightsUnavailableError) as info:
        load_model(name, device="cpu")
    msg = str(info.value)
    assert f"ibot/{folder}/checkpoint_teacher.pth" in msg
    assert name in msg and "weights=" in msg and "github.com/bytedance/ibot" in msg
    with pytest.raises(WeightsUnavailableError, match=folder):  # an estimator, at fit
        AttentionCropper(name, device="cpu").fit()


def test_backbone_file_loads_the_teacher_exactly(backbone_file, teacher):
    vm = load_model("ibot_vits16", weights=backbone_file, device="cpu")
    _assert_exact(_state(vm), teacher)
    assert (tuple(vm.mean), tuple(vm.std)) == IMAGENET  # iBOT's normalisation
    # the same embedding as timm's own model with the weights loaded directly
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    ref.load_state_dict(teacher)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(vm.embed(x), ref(x), rtol=0, atol=0)


def test_full_checkpoint_picks_the_teacher_not_the_student(full_file, teacher, student):
    vm = load_model("ibot_vits16", weights=full_file, device="cpu")
    got = _state(vm)
    _assert_exact(got, teacher)
    assert not any(torch.equal(got[k], student[k]) for k in student)


def test_other_image_size_resamples_like_timm(backbone_file, teacher, tmp_path):
    """At 112 px the position embedding is resampled by timm's own checkpoint filter: the same
    model as timm's pretrained path loading the stripped teacher from a file."""
    vm = load_model("ibot_vits16", weights=backbone_file, image_size=112, device="cpu")
    plain = tmp_path / "teacher.safetensors"
    save_file(teacher, str(plain))
    ref = timm.create_model("vit_small_patch16_224", pretrained=True, num_classes=0,
                            img_size=112,
                            pretrained_cfg_overlay=dict(file=str(plain), custom_load=False))
    _assert_exact(_state(vm), {k: v.detach() for k, v in ref.state_dict().items()})
    assert vm.grid_size == (7, 7)


def test_prefixed_flat_file_and_safetensors(teacher, tmp_path):
    """A backbone extracted with a ``module.backbone.`` prefix left on, as safetensors."""
    path = tmp_path / "teacher.safetensors"
    save_file({f"module.backbone.{k}": v.contiguous() for k, v in teacher.items()}, str(path))
    _assert_exact(_state(load_model("ibot_vits16", weights=path, device="cpu")), teacher)


def test_checkpoint_without_a_teacher_or_of_another_size(teacher, student, tmp_path,
                                                         backbone_file):
    path = tmp_path / "student_only.pth"
    torch.save({"student": {f"module.backbone.{k}": v for k, v in student.items()}}, path)
    with pytest.raises(ValueError, match="student_only.pth"):
        load_model("ibot_vits16", weights=path, device="cpu")
    with pytest.raises(ValueError, match="checkpoint_teacher.pth.*ibot_vitb16.*shape"):
        load_model("ibot_vitb16", weights=backbone_file, device="cpu")
    missing = tmp_path / "partial.pth"
    torch.save({"state_dict": {k: v for k, v in teacher.items() if k != "norm.weight"}}, missing)
    with pytest.raises(ValueError, match="partial.pth.*norm.weight"):
        load_model("ibot_vits16", weights=missing, device="cpu")
