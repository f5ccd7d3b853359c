"""The Ray engine on a local Ray instance with 2 CPU actors, against the in-process results."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from conftest import blob_images, make_clip, make_timm
from sk_a2 import AttentionCropper, CropEmbedder, ZeroShotCLIPClassifier
from sk_a2.backends.base import VisionModel
from sk_a2.cache import image_key
from sk_a2.images import Decoded, load_resized, take
from sk_a2.ray_engine import close_engines, read_batch
from sk_a2.ray_session import open_engines

ray = pytest.importorskip("ray")

S = 64
# Ray batches of 4 images: whole in-process forward batches (2 images × 2 crops), so every
# forward sees the same inputs as in-process and results are bit-identical
RAY = {"engine": "ray", "engine_options": {"num_actors": 2, "batch_size": 4}}
COMMON = {"image_size": S, "batch_size": 4, "device": "cpu", "precision": "float32"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module (3 logical CPUs: 2 model actors and a reading
    actor), its engines closed and the instance shut down after it."""
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    close_engines()
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Ten small PNG files (paths, so cache keys are file digests) and their labels."""
    folder = tmp_path_factory.mktemp("ray_images")
    X, y = blob_images(10, size=S, seed=4)
    paths = []
    for i, image in enumerate(X):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths, y


@pytest.fixture(scope="module")
def vit():
    return make_timm(img_size=S, seed=1)


def cropper(model, **kw):
    return AttentionCropper(model, crop_sizes=(32, 16), **{**COMMON, **kw})


def test_reading_tasks_decode_with_the_sources_cache_keys(images):
    paths, _ = images
    out = read_batch(take(paths, [3, 1]), S)
    assert out["key"].tolist() == [image_key(paths[3]), image_key(paths[1])]
    for row, i in enumerate((3, 1)):
        pixels, hw = load_resized(paths[i], S)
        np.testing.assert_array_equal(out["pixels"][row], pixels)
        assert tuple(out["hw"][row]) == hw
    broken = [paths[0], __file__]
    with pytest.raises(ValueError, match=r"X\[1\]"):
        read_batch(take(broken, [0, 1]), S)


def test_decoded_sources_give_the_results_of_their_files(images, vit):
    """What an actor runs on: decoded pixels with the files' keys, in-process."""
    paths, _ = images
    decoded = [Decoded(*load_resized(p, S), image_key(p)) for p in paths]
    crops = cropper(vit).fit().transform(paths)
    got = cropper(vit).fit().transform(decoded)
    np.testing.assert_array_equal(got.boxes, crops.boxes)
    np.testing.assert_array_equal(got.image_sizes, crops.image_sizes)
    embedder = CropEmbedder(vit, include_full_image=True, **COMMON).fit(crops)
    np.testing.assert_array_equal(embedder.transform(crops.with_images(decoded)),
                                  embedder.transform(crops))
    with pytest.raises(ValueError, match=r"X\[0\] was decoded at 64 px, not at the 32 px"):
        cropper(vit, image_size=32).fit().transform(decoded)
    with pytest.raises(ValueError, match="only pixels resized"):
        CropEmbedder(vit, crop_source="original", **COMMON).fit(crops).transform(
            crops.with_images(decoded))


def test_crops_equal_in_process(images, vit):
    paths, _ = images
    ref = cropper(vit, embed_full_image=True).fit().transform(paths)
    got = cropper(vit, embed_full_image=True, **RAY).fit().transform(paths)
    assert got.images == paths
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.scores, ref.scores)
    np.testing.assert_array_equal(got.image_sizes, ref.image_sizes)
    np.testing.assert_array_equal(got.full_embeddings, ref.full_embeddings)
    assert got.full_embedding_source == ref.full_embedding_source


def test_embeddings_and_memmap_equal_in_process(images, vit, tmp_path, capsys):
    paths, _ = images
    crops = cropper(vit).fit().transform(paths)
    embedder = CropEmbedder(vit, include_full_image=True, **COMMON)
    ref = embedder.fit(crops).transform(crops)
    got = clone(embedder).set_params(**RAY).fit(crops).transform(crops)
    assert type(got) is np.ndarray and got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)
    mapped = clone(embedder).set_params(**RAY, output_dir=tmp_path / "out", verbose=True)
    mapped = mapped.fit(crops).transform(crops)
    report = capsys.readouterr().out  # verbose: per-actor throughput
    assert f"{len(paths)} images on" in report and "images/s" in report
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, ref)
    (saved,) = (tmp_path / "out").glob("*.npy")
    np.testing.assert_array_equal(np.load(saved), ref)
    # the in-process engine writes the same file in blocks
    local = clone(embedder).set_params(output_dir=tmp_path / "local").fit(crops).transform(crops)
    assert isinstance(local, np.memmap)
    np.testing.assert_array_equal(local, ref)


def test_zero_shot_scores_equal_in_process(images, vit):
    paths, y = images
    crops = cropper(vit).fit().transform(paths)
    clf = ZeroShotCLIPClassifier(make_clip(seed=3), classnames=["blue", "red"], **COMMON)
    ref = clf.fit(crops, y).predict_proba(crops)
    got = clone(clf).set_params(**RAY).fit(crops, y).predict_proba(crops)
    np.testing.assert_array_equal(got, ref)
    # crops from the original pixels: no reading tasks, the actors read the files themselves
    original = clone(clf).set_params(crop_source="original")
    plain = clone(original).set_params(**RAY).fit(paths, y).decision_function(paths)
    np.testing.assert_array_equal(plain, original.fit(paths, y).decision_function(paths))


@pytest.fixture
def count_forwards(monkeypatch):
    """Count the model passes run in this (the driver's) process."""
    calls = []
    for name in ("forward_tokens", "embed"):
        original = getattr(VisionModel, name)

        def counted(self, x, _original=original, _name=name):
            calls.append(_name)
            return _original(self, x)

        monkeypatch.setattr(VisionModel, name, counted)
    return calls


def test_grid_search_after_ray_transform_runs_no_model(images, vit, tmp_path, count_forwards):
    paths, y = images
    cache = tmp_path / "cache"
    crops = cropper(vit, n_crops=2, cache=cache, **RAY).fit().transform(paths)
    CropEmbedder(vit, cache=cache, **COMMON, **RAY).fit(crops).transform(crops)
    assert count_forwards == []  # the actors did the model work, not the driver
    pipe = make_pipeline(cropper(vit, cache=cache), CropEmbedder(vit, cache=cache, **COMMON),
                         LogisticRegression(max_iter=200))
    grid = {"attentioncropper__n_crops": [1, 2], "logisticregression__C": [0.1, 1.0]}
    search = GridSearchCV(pipe, grid, cv=2).fit(paths, y)
    assert len(search.cv_results_["params"]) == 4
    assert count_forwards == []
    # control: the counter sees the forwards an empty cache needs
    CropEmbedder(vit, cache=tmp_path / "empty", **COMMON).fit(paths).transform(paths)
    assert count_forwards


def dying_norm(norm, armed):
    """``norm`` that kills its process the first time it runs while ``armed`` (a file) exists."""

    class DieOnce(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = norm

        def forward(self, x):
            try:
                os.rename(armed, armed + ".fired")  # one caller wins
            except FileNotFoundError:
                return self.inner(x)
            os._exit(1)

    return DieOnce()


def test_killed_actor_batches_are_retried(images, vit, tmp_path):
    paths, _ = images
    ref = CropEmbedder(vit, **COMMON).fit(paths).transform(paths)
    armed = tmp_path / "armed"
    armed.touch()
    dying = copy.deepcopy(vit)
    dying.norm = dying_norm(dying.norm, str(armed))
    got = CropEmbedder(dying, **COMMON, **RAY).fit(paths).transform(paths)
    assert not armed.exists() and (tmp_path / "armed.fired").exists()  # an actor did die
    np.testing.assert_array_equal(got, ref)


def counted_model(log):
    """A tiny ViT whose every deserialisation (one per process that receives a copy of it)
    appends that process's id to ``log``."""

    class CountedNorm(torch.nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.inner, self.log = norm, log

        def forward(self, x):
            return self.inner(x)

        def __setstate__(self, state):
            super().__setstate__(state)
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")

    model = make_timm(img_size=S, seed=5)
    model.norm = CountedNorm(model.norm)
    return model.eval()  # in eval mode: used as it is, no copy, in every process


def test_warm_engine_loads_the_model_once_per_actor(images, tmp_path):
    """fit -> transform of the cropper, then of the embedder, then of a clone (as each
    GridSearchCV candidate is): three calls on one engine, one model load in each of its two
    actors, every result equal to the in-process one."""
    paths, _ = images
    log = tmp_path / "loads.txt"
    model = counted_model(str(log))
    ref_crops = cropper(model).fit().transform(paths)
    ref = CropEmbedder(model, include_full_image=True, **COMMON).fit(ref_crops).transform(ref_crops)
    crops = cropper(model, **RAY).fit().transform(paths)                      # call 1: starts
    np.testing.assert_array_equal(crops.boxes, ref_crops.boxes)
    embedder = CropEmbedder(model, include_full_image=True, **COMMON, **RAY).fit(crops)
    np.testing.assert_array_equal(embedder.transform(crops), ref)             # call 2: warm
    np.testing.assert_array_equal(clone(embedder).fit(crops).transform(crops), ref)  # call 3
    (engine,) = [e for e in open_engines() if e.key[0][0].startswith("module:")
                 and any("CountedNorm" in t for t in e.key[0][1])]
    actor_pids = {ray.get(actor.ready.remote()) for actor in engine.actors}
    loads = [int(pid) for pid in log.read_text().split() if int(pid) != os.getpid()]
    assert len(actor_pids) == 2 and sorted(loads) == sorted(actor_pids), (loads, actor_pids)


def test_engine_parameters_clone_and_check(vit):
    est = CropEmbedder(vit, **RAY)
    assert clone(est).get_params()["engine_options"] == RAY["engine_options"]
    with pytest.raises(ValueError, match="unknown keys.*'actors'"):
        CropEmbedder(vit, engine="ray", engine_options={"actors": 2}).fit(["a.png"])
    with pytest.raises(ValueError, match=r"engine_options\['num_actors'\]"):
        CropEmbedder(vit, engine="ray", engine_options={"num_actors": 0}).fit(["a.png"])
    with pytest.raises(ValueError, match=r"engine_options\['read_cpus'\].*CPUs per image-reading"):
        CropEmbedder(vit, engine="ray", engine_options={"read_cpus": 0}).fit(["a.png"])
    with pytest.raises(ValueError, match="engine='ray'"):
        CropEmbedder(vit, engine_options={"num_actors": 1}).fit(["a.png"])
    with pytest.raises(ValueError, match="engine"):
        AttentionCropper(vit, engine="spark").fit()


def test_without_ray_a_clear_error(vit, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    for est in (AttentionCropper(vit, engine="ray"), CropEmbedder(vit, engine="ray")):
        with pytest.raises(ImportError, match=r'pip install "sk-a2\[ray\]"'):
            est.fit(["a.png"])
    AttentionCropper(vit, image_size=S).fit()  # the in-process engine needs no Ray


# Run in a fresh process for each size: the Ray transform into an ``output_dir`` (memmap) and the
# driver's peak RSS during it, then the same transform in memory (the control) and its peak.
# The peak is reset before each (VmHWM via /proc/self/clear_refs): the process's start-up
# (imports, ray.init) can peak higher than either transform and would hide both.
RSS_PROBE = """
import json, sys
import numpy as np, ray, timm, torch
from sk_a2 import CropEmbedder, RandomCropper
n, out_dir = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
vit = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=16, patch_size=16,
                        embed_dim=512, depth=1, num_heads=4)
rng = np.random.RandomState(0)
X = [rng.randint(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)]
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
crops = RandomCropper(crop_sizes=(8,), n_crops=32, image_size=16, random_state=0).fit().transform(X)
emb = CropEmbedder(vit, image_size=16, batch_size=256, device="cpu", precision="float32",
                   engine="ray", engine_options={"num_actors": 1, "batch_size": 100}).fit(crops)
def reset():  # the peak from here on (Linux: clear_refs resets VmHWM), not the start-up's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
reset()
mapped = emb.set_params(output_dir=out_dir).transform(crops)
mapped_peak = peak()
reset()
in_memory = emb.set_params(output_dir=None).transform(crops)
print(json.dumps({"mapped": mapped_peak, "in_memory": peak(), "nbytes": in_memory.nbytes,
                  "equal": bool(np.array_equal(np.asarray(mapped), in_memory)),
                  "is_memmap": isinstance(mapped, np.memmap)}))
"""


def test_memmap_output_keeps_driver_memory_flat(tmp_path):
    """Peak driver RSS for 4n images within 1.2x of that for n with ``output_dir``; the
    in-memory control grows by about the output's size, so the measurement sees the output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no parent Ray
    env = {**env, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    runs = {n: subprocess.Popen([sys.executable, "-c", RSS_PROBE, str(n), str(tmp_path / str(n))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for n in (120, 480)}
    results = {}
    for n, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        results[n] = json.loads(stdout.strip().splitlines()[-1])
    small, large = results[120], results[480]
    assert small["equal"] and large["equal"] and large["is_memmap"]
    extra = large["nbytes"] - small["nbytes"]  # 4n - n rows: about 23 MB more output
    assert extra > 20e6
    assert large["mapped"] <= 1.2 * small["mapped"], results
    assert large["mapped"] - small["mapped"] < 0.25 * extra, results
    # control: held in memory, the output's extra rows do show in the driver's peak
    assert large["in_memory"] - small["in_memory"] > 0.5 * extra, results
