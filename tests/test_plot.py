"""Crop overlays: faded background, bright boxes, PNG files."""

import sys

import numpy as np
import pytest
from conftest import random_images
from PIL import Image

pytest.importorskip("matplotlib")

from sk_a2.baselines import CenterCropper, RandomCropper  # noqa: E402
from sk_a2.cropper import AttentionCropper  # noqa: E402
from sk_a2.plot import (  # noqa: E402
    fade_outside,
    plot_crop_grid,
    plot_crops,
    save_figure,
    save_overlays,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_fade_outside_darkens_only_outside():
    img = np.full((40, 60, 3), 200, dtype=np.uint8)
    out = fade_outside(img, [[10, 5, 30, 25]], fade=0.5)
    assert (out[5:25, 10:30] == 200).all()
    assert (out[:5] == 100).all() and (out[:, 30:] == 100).all()
    assert np.array_equal(fade_outside(img, None), img)
    assert np.array_equal(fade_outside(img, [[0, 0, 60, 40]]), img)
    with pytest.raises(ValueError, match="fade"):
        fade_outside(img, [[0, 0, 1, 1]], fade=1.5)
    with pytest.raises(ValueError, match="boxes"):
        fade_outside(img, [[0, 0, 1]])


@pytest.mark.parametrize("attention", [None, np.ones((4, 4))])
def test_plot_crops_png_faded_region_darker_than_box(tmp_path, attention):
    img = np.full((100, 100, 3), 180, dtype=np.uint8)
    ax = plot_crops(img, [[25, 25, 75, 75]], attention=attention)
    path = save_figure(ax.figure, tmp_path / "one.png", dpi=25)  # 4 inches -> 100 px
    png = _check_png(path).astype(float)
    assert png.shape[:2] == (100, 100)
    inside = png[35:65, 35:65].mean()
    outside = np.concatenate([png[:15].ravel(), png[85:].ravel()]).mean()
    assert outside < 0.7 * inside


def test_plot_crops_on_given_axes_and_errors():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plot_crops(random_images(1)[0], np.array([0, 0, 10, 10]), ax=ax) is ax
    assert len(ax.patches) == 1 and len(ax.texts) == 1
    with pytest.raises(ValueError, match="2-D"):
        plot_crops(random_images(1)[0], [[0, 0, 5, 5]], attention=np.ones(3))


def test_plot_crop_grid(tmp_path):
    X = random_images(5, h=40, w=30)
    cs = RandomCropper(crop_sizes=(32, 16), image_size=64, random_state=0).fit_transform(X)
    maps = np.random.RandomState(0).rand(5, 4, 4)
    fig = plot_crop_grid(X, cs, maps, ncols=3, titles=[f"#{i}" for i in range(5)])
    axes = fig.get_axes()
    assert len(axes) == 6
    assert [a.get_title() for a in axes[:5]] == [f"#{i}" for i in range(5)]
    assert not axes[5].axison
    assert all(len(a.patches) == 2 for a in axes[:5])
    _check_png(save_figure(fig, tmp_path / "grid.png", dpi=40))
    assert len(plot_crop_grid(None, cs, ncols=10).get_axes()) == 5
    with pytest.raises(ValueError, match="cropset has 5"):
        plot_crop_grid(X[:2], cs)
    with pytest.raises(ValueError, match="CropSet"):
        plot_crop_grid(X, cs.boxes)
    with pytest.raises(ValueError, match="ncols"):
        plot_crop_grid(X, cs, ncols=0)


def test_save_overlays_baseline_arrays(tmp_path):
    X = random_images(3, h=48, w=64)
    paths = save_overlays(CenterCropper(crop_sizes=(32,), image_size=64), X, tmp_path / "out",
                          dpi=30)
    assert [p.name for p in paths] == [f"image_{i:04d}_crops.png" for i in range(3)]
    for p in paths:
        png = _check_png(p).astype(float)
        h, w = png.shape[:2]
        centre = png[int(0.4 * h):int(0.6 * h), int(0.4 * w):int(0.6 * w)].mean()
        corner = png[: int(0.1 * h), : int(0.1 * w)].mean()
        assert corner < centre


def test_save_overlays_attention_paths(tmp_path, tiny_vit_file):
    rng = np.random.RandomState(0)
    files = []
    for folder, name in (("a", "bird"), ("b", "bird"), ("b", "cat")):
        (tmp_path / folder).mkdir(exist_ok=True)
        files.append(tmp_path / folder / f"{name}.png")
        Image.fromarray(rng.randint(0, 256, size=(50, 70, 3), dtype=np.uint8)).save(files[-1])
    cropper = AttentionCropper("timm:test_vit", weights=tiny_vit_file, crop_sizes=(32,),
                               image_size=64, device="cpu")
    out = save_overlays(cropper, files, tmp_path / "overlays", dpi=20)
    assert [p.name for p in out] == ["0_bird_crops.png", "1_bird_crops.png", "2_cat_crops.png"]
    for p in out:
        _check_png(p)
    named = save_overlays(cropper.fit(), files[2:], tmp_path / "named", names=["x"],
                          heatmap=False, dpi=20)
    assert [p.name for p in named] == ["x_crops.png"]
    with pytest.raises(ValueError, match="names"):
        save_overlays(cropper, files, tmp_path, names=["x"])


def test_missing_matplotlib_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "sk-a2\[plot\]"'):
        plot_crops(random_images(1)[0], [[0, 0, 4, 4]])
