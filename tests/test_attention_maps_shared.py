"""One home for attention maps: the cropper, the localization report and the adapter share them.

Forwards are counted at :func:`sk_a2.attention.layer_cls_attention`, the only function that runs
the attention model for maps: each image must go through the model once, whichever of the three
asks first, and a search over ``crop__layer`` must cost one pass.
"""

import numpy as np
import pytest
from conftest import blob_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

import sk_a2.attention as attention
from sk_a2 import AttentionAdapter, AttentionCropper, CropEmbedder
from sk_a2.cache import MemoryCache, memory_cache
from sk_a2.localization import localization_report


@pytest.fixture
def forwards(monkeypatch):
    """Images run through the attention model, one entry per forward: (images, blocks)."""
    calls, real = [], attention.layer_cls_attention

    def counting(vm, x, layers, **kwargs):
        calls.append((len(x), list(layers)))
        return real(vm, x, layers, **kwargs)

    monkeypatch.setattr(attention, "layer_cls_attention", counting)
    return calls


def _images(n=6):
    X, y = blob_images(n, size=64, seed=3)
    y[:2] = [0, 1]  # both classes
    boxes = np.tile([8, 8, 40, 40], (n, 1))
    return X, y, boxes


def _cropper(weights, cache):
    return AttentionCropper("timm:test_vit", weights=weights, image_size=64, crop_sizes=(16,),
                            device="cpu", cache=cache).fit()


def _adapter(weights, weights2, cache, X, y):
    return AttentionAdapter("timm:test_vit", "timm:test_vit", attention_weights=weights,
                            embedding_weights=weights2, image_size=64, outer_epochs=0,
                            device="cpu", cache=cache, random_state=0).fit(X, y)


def _images_run(calls):
    return sum(n for n, _ in calls)


def test_cropper_then_report_then_adapter_run_the_model_once(
        forwards, tiny_vit_file, tiny_vit_file2):
    X, y, boxes = _images()
    cache = MemoryCache(2**28)
    cropper = _cropper(tiny_vit_file, cache)
    crops = cropper.transform(X)
    assert _images_run(forwards) == len(X)
    # the report's blocks -1 and -2 were stored by the cropper's forward (to the last block)
    report = localization_report(cropper, X, boxes, layers=[-2, -1])
    adapter = _adapter(tiny_vit_file, tiny_vit_file2, cache, X, y)
    maps = adapter.attention_maps(X)
    assert _images_run(forwards) == len(X)
    np.testing.assert_array_equal(maps, cropper.attention_maps(X))
    np.testing.assert_array_equal(adapter.transform(X).image_sizes, crops.image_sizes)
    assert sorted(set(report["layer"])) == [-2, -1]


def test_report_then_cropper_and_adapter_read_its_maps(forwards, tiny_vit_file, tiny_vit_file2):
    X, y, boxes = _images()
    cache = MemoryCache(2**28)
    cropper = _cropper(tiny_vit_file, cache)
    localization_report(cropper, X, boxes, layers="all")
    assert _images_run(forwards) == len(X)
    for layer in (-1, -3, 0):  # every block of the report's pass
        _cropper(tiny_vit_file, cache).set_params(layer=layer).fit().transform(X)
    _adapter(tiny_vit_file, tiny_vit_file2, cache, X, y).attention_maps(X)
    assert _images_run(forwards) == len(X)


def test_grid_search_over_layer_costs_one_attention_pass(forwards, tiny_vit_file,
                                                          tiny_vit_file2):
    memory_cache().clear()
    X, y, _ = _images(8)
    pipe = Pipeline([
        ("crop", AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                                  crop_sizes=(16,), device="cpu", cache="memory")),
        ("emb", CropEmbedder("timm:test_vit", weights=tiny_vit_file2, image_size=64,
                             device="cpu", cache="memory")),
        ("lr", LogisticRegression(max_iter=200)),
    ])
    search = GridSearchCV(pipe, {"crop__layer": [-1, -2]}, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert _images_run(forwards) == len(X)  # each image once, for both layers and both folds
    memory_cache().clear()


def test_a_disk_cache_keeps_only_the_blocks_asked_for(forwards, tiny_vit_file, tmp_path):
    """A folder does not grow with the model's depth: the last block's forward stores that
    block's map only, so another block runs the model again; asked for together
    (``layer_maps``), both come from one pass and are read back."""
    X, _, _ = _images()
    cache = str(tmp_path / "cache")
    _cropper(tiny_vit_file, cache).transform(X)
    _cropper(tiny_vit_file, cache).set_params(layer=-2).fit().transform(X)
    assert _images_run(forwards) == 2 * len(X)
    forwards.clear()
    fresh = str(tmp_path / "fresh")
    _cropper(tiny_vit_file, fresh).layer_maps(X, [-1, -2])
    for layer in (-1, -2):
        _cropper(tiny_vit_file, fresh).set_params(layer=layer).fit().transform(X)
    assert _images_run(forwards) == len(X)
