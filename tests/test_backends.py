"""Model families behind one interface, found through a registry; list_models' glob filter."""

import fnmatch

import numpy as np
import pytest
import torch
from conftest import make_timm, random_images

import sk_a2.backends as backends
import sk_a2.models as models
from sk_a2 import AttentionCropper, CropEmbedder, list_models
from sk_a2.backends import ModelSpec, backend_for_module, get_backend, list_backends
from sk_a2.backends.timm import TimmBackend
from sk_a2.models import load_model, register_model, resolve_model_spec


@pytest.mark.parametrize("pattern", ["dinov2_*", "*vitl14*", "dino_vit?8", "mae_vit[bl]16"])
def test_list_models_glob(pattern):
    names = list_models()
    expected = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    assert list_models(pattern) == expected and expected  # sorted, non-empty
    assert set(list_models(pattern)) < set(names)


def test_list_models_glob_edge_cases():
    assert list_models("dinov2_*") == [n for n in list_models() if n.startswith("dinov2_")]
    assert list_models("*") == list_models() == list_models(None)
    assert list_models("no_such_model*") == []
    assert list_models("DINOV2_*") == []  # case-sensitive, as model names are
    with pytest.raises(TypeError, match="pattern must be a str"):
        list_models(3)


def test_every_short_name_has_a_registered_backend():
    assert {"timm", "open_clip", "imgfocus"} <= set(list_backends())
    for name in list_models():
        library = resolve_model_spec(name).library
        assert get_backend(library).name == library
    with pytest.raises(ValueError, match="no model backend 'nope'; registered: .*timm"):
        get_backend("nope")


def test_modules_are_claimed_by_their_library():
    from conftest import make_clip

    assert backend_for_module(make_timm("test_vit")).name == "timm"
    assert backend_for_module(make_clip()).name == "open_clip"
    assert get_backend("open_clip").has_text_tower and not get_backend("timm").has_text_tower
    with pytest.raises(ValueError, match="pass a timm vision transformer"):
        backend_for_module(torch.nn.Linear(2, 2))


class ToyBackend(TimmBackend):
    """A new family: 'toy:<seed>' is timm's test_vit with random weights from that seed."""

    name = "toy"
    name_hint = "any toy model as 'toy:<seed>'"

    def parse(self, model, rest):
        return ModelSpec(model, self.name, "test_vit", rest) if rest.isdigit() else None

    def load(self, spec, weights, image_size, device):
        module = make_timm("test_vit", img_size=image_size, seed=int(spec.pretrained))
        return self.finish(module, spec, image_size, device, *self.mean_std(module))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(backends, "_BACKENDS", dict(backends._BACKENDS))
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))
    backends.register_backend(ToyBackend)
    models.clear_model_cache()
    yield
    models.clear_model_cache()


def test_a_new_family_is_one_registered_class(toy):
    vm = load_model("toy:3", image_size=64, device="cpu")
    assert vm.library == "toy" and vm.grid_size == (4, 4)
    ref = make_timm("test_vit", img_size=64, seed=3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vm.embed(x), ref.forward_features(x)[:, 0])
    X = random_images(3, 64, 64)
    cs = AttentionCropper("toy:3", image_size=64, crop_sizes=(32,), device="cpu").fit_transform(X)
    emb = CropEmbedder("toy:3", image_size=64, device="cpu").fit(cs).transform(cs)
    assert cs.boxes.shape == (3, 1, 4) and emb.shape == (3, vm.embed_dim)
    with pytest.raises(ValueError, match="any toy model as 'toy:<seed>'"):
        resolve_model_spec("toy:x")  # the hint lists the new form


def test_register_model_adds_a_short_name(toy):
    register_model("toy_small", "toy", "test_vit", "5")
    assert "toy_small" in list_models("toy_*")
    a = load_model("toy_small", image_size=64, device="cpu")
    b = load_model("toy:5", image_size=64, device="cpu")
    np.testing.assert_array_equal(a.module.pos_embed.numpy(), b.module.pos_embed.numpy())
    with pytest.raises(ValueError, match="no model backend"):
        register_model("bad", "nope", "x")
