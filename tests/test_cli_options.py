"""Every option of every ``sk-a2`` subcommand changes the run or is refused.

The options are enumerated from the parser itself: an option without a row in ``CASES`` fails
``test_every_option_has_a_row``. No model runs here: the estimators, the protocol, the heads, the
figure writers and the dataset loaders are replaced by recorders, and each case checks that the
option's value reaches the call it is meant for (and that it does not without the option), or that
a combination in which it would be ignored ends with one line ``sk-a2 <command>: error: ...`` and
exit status 2.
"""

import csv
import dataclasses
import functools
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from repro_layouts import write_spawrious, write_waterbirds

from sk_a2.cli import build_parser, main

METRICS = ("accuracy", "worst_group_accuracy", "mean_group_accuracy", "train_weighted_accuracy",
           "worst_class_accuracy")
CLIP = "open_clip:SkA2-Tiny:"
OTHER = "timm:vit_tiny_patch16_224"  # a second model name (never loaded here)


# --------------------------------------------------------------------------------------------
# Recorders
# --------------------------------------------------------------------------------------------


class Recorder:
    """Every fake call, in order: ``(name, args, kwargs)``."""

    def __init__(self):
        self.events = []
        self.ids = {}  # input item -> row id written into fake features

    def add(self, name, args=(), kwargs=None):
        self.events.append((name, tuple(args), dict(kwargs or {})))

    def calls(self, name):
        return [(a, k) for n, a, k in self.events if n == name]

    def kw(self, name, key, default=None):
        """``key`` of the first call of ``name`` (``default`` when never called)."""
        found = self.calls(name)
        return found[0][1].get(key, default) if found else default

    def arg(self, name, i=0):
        found = self.calls(name)
        return found[0][0][i] if found and len(found[0][0]) > i else None

    def called(self, name):
        return bool(self.calls(name))

    def item_id(self, item):
        return self.ids.setdefault(str(item), len(self.ids))

    def item_of(self, row_id):
        return {v: k for k, v in self.ids.items()}[int(row_id)]


class FakeCrops:
    def __init__(self, items, k):
        self.items = list(items)
        self.boxes = [[(0.0, 0.0, 8.0, 8.0)] * k for _ in self.items]
        self.scores = [[0.5] * k for _ in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        return FakeCrops(np.asarray(self.items, dtype=object)[idx], len(self.boxes[0]))


def fake_estimator(rec, name):
    class Fake:
        def __init__(self, *args, **kwargs):
            rec.add(name, args, kwargs)
            self.kwargs = dict(kwargs)
            sizes = kwargs.get("crop_sizes") or (32,)
            self.crop_sizes_ = list(sizes)
            self.embed_dim_ = 4

        def fit(self, *args, **kwargs):
            rec.add(f"{name}.fit", args, kwargs)
            return self

        def set_params(self, **kwargs):
            self.kwargs.update(kwargs)
            rec.add(f"{name}.set_params", (), kwargs)
            return self

        def transform(self, X):
            rec.add(f"{name}.transform", (X,), {})
            k = self.kwargs.get("n_crops") or len(self.crop_sizes_)
            return FakeCrops(X.items if isinstance(X, FakeCrops) else X, k)

        def attention_maps(self, X):
            return np.zeros((len(X), 4, 4), dtype=np.float32)

        def fit_transform(self, X, y=None):
            rec.add(f"{name}.fit_transform", (X,), {})
            items = X.items if isinstance(X, FakeCrops) else list(X)
            ids = np.asarray([rec.item_id(i) for i in items], dtype=np.float64)
            width = 8 if self.kwargs.get("include_full_image") else 4
            return np.repeat(ids[:, None], width, axis=1)

        def predict(self, X):
            return np.zeros(len(X), dtype=np.int64)

    Fake.__name__ = name
    return Fake


class Predictor:
    def predict(self, X):
        return np.zeros(len(X), dtype=np.int64)


def fake_head(rec, name):
    def fit(*args, **kwargs):
        rec.add(name, args, kwargs)
        return Predictor()

    return fit


class FakeTuned:
    def __init__(self, spec):
        self.best_params = {"crop__crop_sizes": spec.crop_sizes, "crop__n_crops": 1,
                            "crop__layer": -1, "lr__C": 1.0}
        self.best_score = 0.5
        self.metric = "worst_group_accuracy"
        self.table = [{"rank": 1, "score": 0.5, "params": self.best_params}]

    def to_dict(self):
        return {}


class FakeMatrix:
    def format(self, metric):
        return "matrix"

    def to_csv(self, path):
        Path(path).write_text("matrix\n")
        return Path(path)

    def plot(self, metric, title=""):
        return None

    def to_dict(self):
        return {}


def fake_protocol(rec):
    class FakeProtocol:
        def __init__(self, data, **kwargs):
            rec.add("Protocol", (data,), kwargs)
            self.data = data
            self.dfr_mode = kwargs.get("dfr_mode") or (
                "val" if data.mask("val").any() else "train")

        def fit_split(self, head):
            return "val" if head == "dfr" and self.dfr_mode == "val" else "train"

        def run_rows(self, specs, seeds=(0,)):
            rec.add("run_rows", (list(specs), list(seeds)), {})
            return [{"key": s.key, "label": s.label, "mean": dict.fromkeys(METRICS, 0.5),
                     "std": dict.fromkeys(METRICS, 0.0), "reported": {}} for s in specs]

        def tune(self, spec, grid=None):
            rec.add("tune", (spec, grid), {})
            return FakeTuned(spec)

        def cross_model_matrix(self, attentions, embeddings, **kwargs):
            rec.add("cross_model_matrix", (list(attentions), list(embeddings)), kwargs)
            return FakeMatrix()

    return FakeProtocol


def recording_loader(rec, benchmark):
    real = benchmark.loader

    @functools.wraps(real)
    def loader(root, **kwargs):
        rec.add("load", (benchmark.name, root), kwargs)
        return real(root, **kwargs)

    return dataclasses.replace(benchmark, loader=loader)


def fake_localization_columns(reports):
    n = 1
    cols = {"model": np.array(["m"] * n, dtype=object),
            "head_aggregation": np.array(["mean"] * n, dtype=object),
            "layer": np.array([0] * n), "image": np.array([0] * n), "n_params": np.array([1.0])}
    for key in ("mass_in_box_mean", "mass_in_box_std", "hit_mean", "entropy_mean",
                "top10_mass_mean", "patch_share_mean", "mass_in_box"):
        cols[key] = np.array([0.5] * n)
    return cols


def fake_loc_data(rec, name):
    def load(root, **kwargs):
        rec.add(name, (root,), kwargs)
        images = np.array([f"{root}/a.png", f"{root}/b.png", f"{root}/c.png"], dtype=object)
        return SimpleNamespace(images=images, boxes=np.zeros((3, 1, 4)),
                               split=np.array(["train", "val", "test"]),
                               clipped_boxes=np.zeros(3, dtype=np.int64))

    return load


@pytest.fixture
def rec(monkeypatch):
    """Replace every model, head, protocol, figure and loader the CLI reaches by recorders."""
    import sk_a2.adapter
    import sk_a2.baselines
    import sk_a2.cropper
    import sk_a2.datasets
    import sk_a2.embedder
    import sk_a2.localization  # imported before load_model is replaced: it binds the name
    import sk_a2.models
    import sk_a2.zeroshot
    from sk_a2.cli import demo, evaluate, reproduce

    rec = Recorder()
    for module, name in ((sk_a2.cropper, "AttentionCropper"), (sk_a2.embedder, "CropEmbedder"),
                         (sk_a2.baselines, "CenterCropper"), (sk_a2.baselines, "RandomCropper"),
                         (sk_a2.adapter, "AttentionAdapter"),
                         (sk_a2.zeroshot, "ZeroShotCLIPClassifier")):
        monkeypatch.setattr(module, name, fake_estimator(rec, name))
    for module in (evaluate, demo):
        monkeypatch.setattr(module, "fit_lr", fake_head(rec, "fit_lr"))
        monkeypatch.setattr(module, "fit_dfr", fake_head(rec, "fit_dfr"))
    monkeypatch.setattr(reproduce, "Protocol", fake_protocol(rec))
    real_get = evaluate.get_benchmark

    def get_benchmark(name, **csv_options):
        rec.add("get_benchmark", (name,), csv_options)
        return recording_loader(rec, real_get(name, **csv_options))

    monkeypatch.setattr(evaluate, "get_benchmark", get_benchmark)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sk_a2.models, "load_model", no_model)
    real_synthetic = sk_a2.datasets.make_spurious_images

    def synthetic(n_samples, **kwargs):
        rec.add("make_spurious_images", (n_samples,), kwargs)
        return real_synthetic(n_samples, **kwargs)

    monkeypatch.setattr(sk_a2.datasets, "make_spurious_images", synthetic)
    for name in ("load_waterbirds", "load_imagenet_val", "load_image_folder"):
        monkeypatch.setattr(sk_a2.datasets, name, fake_loc_data(rec, name))

    def draw_overlays(*args, **kwargs):
        rec.add("draw_overlays", args, kwargs)
        return []

    monkeypatch.setattr(demo, "draw_overlays", draw_overlays)
    patch_localization_and_figures(monkeypatch, rec)
    return rec


def patch_localization_and_figures(monkeypatch, rec):
    """The localization measures and every figure writer, as recorders."""
    import sk_a2.localization
    import sk_a2.localization_plot
    import sk_a2.plot

    monkeypatch.setattr(sk_a2.localization, "localization_report",
                        fake_head(rec, "localization_report"))
    monkeypatch.setattr(sk_a2.localization, "report_columns", fake_localization_columns)
    monkeypatch.setattr(sk_a2.localization, "summarize_report", lambda reports: reports)
    for name in ("plot_mass_hit_vs_size", "plot_per_layer", "plot_token_shares"):
        monkeypatch.setattr(sk_a2.localization_plot, name, lambda summary: None)

    def save_figure(fig, path, dpi=100):
        rec.add("save_figure", (path,), {})
        Path(path).write_bytes(b"png")
        return Path(path)

    def save_overlays(cropper, X, out_dir, **kwargs):
        rec.add("save_overlays", (cropper, X, out_dir), kwargs)
        return []

    monkeypatch.setattr(sk_a2.plot, "save_figure", save_figure)
    monkeypatch.setattr(sk_a2.plot, "save_overlays", save_overlays)
    patch_report(monkeypatch, rec)


def patch_report(monkeypatch, rec):
    """The HTML report's writer, and its crops and maps, as recorders."""
    import sk_a2.report

    def write_report(path, **kwargs):
        rec.add("write_report", (path,), kwargs)
        Path(path).write_text(f"<!DOCTYPE html>\n{sk_a2.report.MARKER}\n")
        return Path(path)

    def crops_and_maps(cropper, X):
        rec.add("crops_and_maps", (cropper, X), {})
        return cropper.transform(X), np.zeros((len(X), 4, 4), dtype=np.float32)

    monkeypatch.setattr(sk_a2.report, "write_report", write_report)
    monkeypatch.setattr(sk_a2.report, "crops_and_maps", crops_and_maps)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def write_metashift_animals(root, images):
    """The MetaShift Animals layout over ``images``: 24 train rows, the rest test."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_filename", "label", "context", "split"])
        for i, path in enumerate(images):
            split = "train" if i < 24 else "test"
            context = ("water", "grass")[(i // 2) % 2] if split == "train" else "rock"
            writer.writerow([str(path), ("bear", "cow")[i % 2], context, split])
    return root


def write_csv_dataset(path, images):
    """A CSV of ``images`` with two image columns, two label columns, a group and a split."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img", "img2", "label", "label2", "place", "part", "part2"])
        for i, image in enumerate(images):
            writer.writerow([image, images[-1 - i], ("cat", "dog")[i % 2], i % 4 // 2,
                             ("in", "out")[i // 2 % 2], ("train", "test")[i >= 24],
                             ("train", "test")[i < 8]])
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_vit_file):
    root = tmp_path_factory.mktemp("cli_options")
    wb = write_waterbirds(root / "wb")
    paths = {"wb": wb, "wb2": write_waterbirds(root / "wb2", seed=1),
             "sp": write_spawrious(root / "sp"),
             "ma": write_metashift_animals(root / "ma", sorted(wb.glob("*/*.png"))),
             "weights": tiny_vit_file, "file": root / "a_file.txt",
             "img": root / "img" / "one.png", "img2": root / "img" / "two.png"}
    paths["file"].write_text("not a folder")
    paths["img"].parent.mkdir()
    for i, key in enumerate(("img", "img2")):
        Image.fromarray(np.full((40, 48, 3), 60 * i, dtype=np.uint8)).save(paths[key])
    paths["tree"] = root / "tree"  # one image at the top, two in class subfolders
    for rel in ("top.png", "cat/a.png", "dog/b.png"):
        (paths["tree"] / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(paths["tree"] / rel)
    (root / "loc").mkdir()
    (root / "loc" / "boxes.csv").write_text("image,x0,y0,x1,y1\n")
    paths["loc"] = root / "loc"
    paths["csv"] = write_csv_dataset(root / "mine.csv",
                                     [str(p) for p in sorted(wb.glob("*/*.png"))])
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Changes:
    """``extra`` makes ``check(rec, names)`` true; the run without it (``base`` only) does not."""

    extra: tuple
    check: object
    base: tuple = ()


@dataclasses.dataclass
class Refused:
    """``extra`` ends with one line ``sk-a2 <command>: error: ...`` holding ``needle``."""

    extra: tuple
    needle: str


@dataclasses.dataclass
class Rewrites:
    """With the command's results file already in ``--out``: refused without ``--overwrite``,
    rewritten with it."""

    name: str
    extra: tuple = ()


BASE = {
    "evaluate": ["--dataset", "waterbirds", "--root", "{wb}"],
    "demo": ["--n-samples", "40", "--image-size", "64", "--crop-sizes", "32",
             "--attention-model", "timm:test_vit", "--embedding-model", "timm:test_vit",
             "--device", "cpu", "--out", "{out}"],
    "localize": ["--models", "timm:test_vit", "--image-size", "64", "--device", "cpu",
                 "--out", "{out}"],
    "crops": ["--model", "timm:test_vit", "--image-size", "64", "--crop-sizes", "32",
              "--device", "cpu", "--out", "{out}"],
}
POSITIONALS = {"crops": ["{img}"]}
#: Values of a case that are more positionals (they come first on the command line).
MORE_POSITIONALS = ("{img2}", "{tree}")


def fill(value, names):
    """``value`` with its ``{placeholder}`` parts replaced by this run's paths."""
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, (list, tuple)):
        return type(value)(fill(v, names) for v in value)
    return value


def kw(name, key, value):
    return lambda rec, names: rec.kw(name, key) == fill(value, names)


def first_arg(name, value, i=0):
    return lambda rec, names: rec.arg(name, i) == fill(value, names)


def called(name):
    return lambda rec, names: rec.called(name)


def rows_of(rec):
    return rec.arg("run_rows", 0) or []


def row_sizes(method, value):
    return lambda rec, names: [s.crop_sizes for s in rows_of(rec) if s.method == method] == value


def spec_field(field, value):
    return lambda rec, names: bool(rows_of(rec)) and all(
        getattr(s, field) == value for s in rows_of(rec) if s.method != "full")


def loaded(key, value):
    return lambda rec, names: bool(rec.calls("load")) and rec.calls("load")[0][1].get(key) == value


def same_path(name, i, value):
    return lambda rec, names: rec.arg(name, i) is not None and \
        Path(rec.arg(name, i)) == Path(fill(value, names))


#: ``--dataset csv:FILE`` with the columns it needs (a split column: nothing drawn).
CSV = ("--dataset", "csv:{csv}", "--image-column", "img", "--target-column", "label",
       "--split-column", "part")

EVALUATE = {
    "--dataset": [Changes(("--dataset", "spawrious_o2o_hard", "--root", "{sp}"),
                          first_arg("load", "spawrious_o2o_hard")),
                  Changes(CSV, first_arg("load", "csv:{csv}")),
                  Refused(("--dataset", "csv:{csv}", "--image-column", "img"),
                          "--target-column")],
    "--root": [Changes(("--root", "{wb2}"), first_arg("load", "{wb2}", 1))],
    "--attention-model": [
        Changes(("--attention-model", OTHER), first_arg("AttentionCropper", OTHER)),
        Refused(("--cropper", "none", "--attention-model", OTHER), "--attention-model"),
        Refused(("--attention-models", "timm:test_vit", "--attention-model", OTHER),
                "--attention-model"),
    ],
    "--attention-weights": [
        Changes(("--attention-weights", "{weights}"),
                kw("AttentionCropper", "weights", "{weights}")),
        Refused(("--cropper", "center", "--attention-weights", "{weights}"),
                "--attention-weights"),
    ],
    "--embedding-model": [
        Changes(("--embedding-model", OTHER), first_arg("CropEmbedder", OTHER)),
        Refused(("--embedding-models", "timm:test_vit", "--embedding-model", OTHER),
                "--embedding-model"),
    ],
    "--embedding-weights": [
        Changes(("--embedding-weights", "{weights}"),
                kw("CropEmbedder", "weights", "{weights}")),
        Refused(("--embedding-models", "timm:test_vit", "--embedding-weights", "{weights}"),
                "--embedding-weights"),
    ],
    "--cropper": [
        Changes(("--cropper", "center"), called("CenterCropper")),
        Changes(("--cropper", "adapter"), called("AttentionAdapter")),
        Refused(("--compare", "--cropper", "random"), "--cropper"),
    ],
    "--crop-sizes": [
        Changes(("--crop-sizes", "32,16"), kw("AttentionCropper", "crop_sizes", (32, 16))),
        Changes(("--crop-sizes", "32,16", "--seeds", "2"),
                row_sizes("a2", [(32, 16)])),
        Refused(("--cropper", "none", "--crop-sizes", "32"), "--crop-sizes"),
        Refused(("--cropper", "adapter", "--crop-sizes", "32"), "--crop-sizes"),
    ],
    "--n-crops": [
        Changes(("--n-crops", "2"), kw("AttentionCropper", "n_crops", 2)),
        Changes(("--n-crops", "2", "--seeds", "2"), spec_field("n_crops", 2)),
        Refused(("--cropper", "none", "--n-crops", "2"), "--n-crops"),
        Refused(("--tune", "--n-crops", "2"), "--n-crops"),
    ],
    "--head": [Changes(("--head", "dfr"), called("fit_dfr"))],
    "--classnames": [
        Changes(("--classnames", "a", "b"), kw("ZeroShotCLIPClassifier", "classnames",
                                                ["a", "b"]),
                base=("--head", "zs", "--embedding-model", CLIP)),
        Refused(("--classnames", "a", "b"), "--classnames"),
    ],
    "--image-size": [Changes(("--image-size", "112"), kw("CropEmbedder", "image_size", 112))],
    "--crop-source": [
        Changes(("--crop-source", "original"), kw("CropEmbedder", "crop_source", "original")),
        Changes(("--crop-source", "original", "--seeds", "2"),
                spec_field("crop_source", "original")),
        Refused(("--cropper", "none", "--crop-source", "original"), "--crop-source"),
    ],
    "--batch-size": [Changes(("--batch-size", "7"), kw("CropEmbedder", "batch_size", 7)),
                     Changes(("--batch-size", "7", "--seeds", "2"),
                             kw("Protocol", "batch_size", 7))],
    "--device": [Changes(("--device", "cpu"), kw("CropEmbedder", "device", "cpu"))],
    "--num-workers": [Changes(("--num-workers", "1"), kw("CropEmbedder", "num_workers", 1)),
                      Changes(("--num-workers", "1", "--seeds", "2"),
                              kw("Protocol", "num_workers", 1))],
    "--seed": [
        Changes(("--seed", "3"), first_arg("fit_dfr", 3, 4),
                base=("--head", "dfr")),
        Changes(("--seed", "3"), kw("RandomCropper", "random_state", 3),
                base=("--cropper", "random")),
        Changes(("--seed", "3"), loaded("random_state", 3),
                base=("--dataset", "spawrious_o2o_hard", "--root", "{sp}", "--val-size",
                      "0.25")),
        Changes(("--seed", "3", "--compare"),
                first_arg("run_rows", [3], 1)),
        Changes(("--seed", "3"), kw("get_benchmark", "random_state", 3),
                base=CSV[:-2]),  # no --split-column: --seed seeds the drawn split
        Refused(("--seed", "3"), "--seed"),
    ],
    "--out": [Changes(("--out", "{dir}/o"), lambda rec, names: Path(names["dir"], "o",
                                                          "evaluate_waterbirds_lr.json").is_file())],
    "--overwrite": [Rewrites("evaluate_waterbirds_lr.json"),
                    Rewrites("evaluate_waterbirds_lr.json", ("--seeds", "2")),
                    Refused(("--overwrite",), "--overwrite")],
    "--report": [Changes(("--report", "--out", "{dir}/o"), same_path("write_report", 0,
                                                                     "{dir}/o/report.html")),
                 Refused(("--report",), "--out")],
    "--preset": [Changes(("--preset", "paper"), first_arg("run_rows", [0, 1, 2, 3, 4], 1))],
    "--seeds": [Changes(("--seeds", "3"), first_arg("run_rows", [0, 1, 2], 1))],
    "--tune": [Changes(("--tune",), called("tune")),
               Refused(("--tune", "--cropper", "none"), "--tune")],
    "--compare": [Changes(("--compare",), lambda rec, names: len(rows_of(rec)) == 10)],
    "--attention-models": [
        Changes(("--attention-models", f"timm:test_vit,{OTHER}"),
                lambda rec, names: [m.name for m in rec.arg("cross_model_matrix", 0) or ()]
                == ["timm:test_vit", OTHER])],
    "--embedding-models": [
        Changes(("--embedding-models", f"timm:test_vit,{OTHER}"),
                lambda rec, names: [m.name for m in rec.arg("cross_model_matrix", 1) or ()]
                == ["timm:test_vit", OTHER])],
    "--center-crop-size": [
        Changes(("--center-crop-size", "48"), kw("CenterCropper", "crop_sizes", (48,)),
                base=("--cropper", "center")),
        Changes(("--center-crop-size", "48"), row_sizes("center", [(48,), (48,)]),
                base=("--compare",)),
        Refused(("--center-crop-size", "48"), "--center-crop-size"),
        Refused(("--cropper", "center", "--crop-sizes", "32", "--center-crop-size", "48"),
                "--center-crop-size"),
    ],
    "--val-size": [
        Changes(("--val-size", "0.25"), loaded("val_size", 0.25),
                base=("--dataset", "spawrious_o2o_hard", "--root", "{sp}")),
        Changes(("--val-size", "0.25", "--seeds", "2"), loaded("val_size", 0.25),
                base=("--dataset", "spawrious_o2o_hard", "--root", "{sp}")),
        Changes(("--val-size", "0.25"), first_arg("fit_dfr", "val", 3),
                base=("--dataset", "metashift_animals", "--root", "{ma}", "--head", "dfr")),
        Refused(("--dataset", "spawrious_o2o_hard", "--root", "{sp}", "--val-size", "1.5"),
                "--val-size"),
        Refused(("--dataset", "spawrious_o2o_hard", "--root", "{sp}", "--val-size", "0"),
                "--val-size"),
        Refused(("--dataset", "spawrious_o2o_hard", "--root", "{sp}", "--val-size", "-0.2"),
                "--val-size"),
        Refused(("--val-size", "0.2"), "waterbirds has its own val split"),
        Refused(("--dataset", "spawrious_o2o_hard", "--root", "{sp}", "--val-size", "0.2",
                 "--head", "zs", "--embedding-model", CLIP), "--val-size"),
    ],
    "--image-column": [
        Changes(("--image-column", "img2"), kw("get_benchmark", "image_column", "img2"),
                base=CSV),
        Refused(("--image-column", "img"), "--image-column"),
    ],
    "--target-column": [
        Changes(("--target-column", "label2"), kw("get_benchmark", "target_column", "label2"),
                base=CSV),
        Refused(("--target-column", "label"), "--target-column"),
    ],
    "--group-column": [
        Changes(("--group-column", "place"), kw("get_benchmark", "group_column", "place"),
                base=CSV),
        Refused(("--group-column", "place"), "--group-column"),
    ],
    "--split-column": [
        Changes(("--split-column", "part2"), kw("get_benchmark", "split_column", "part2"),
                base=CSV),
        Refused(("--split-column", "part"), "--split-column"),
    ],
    "--cache": [
        Changes(("--cache", "{dir}/cache"), kw("CropEmbedder", "cache", "{dir}/cache")),
        Changes(("--cache", "memory"), kw("AttentionCropper", "cache", "memory")),
        Changes(("--cache", "none"), kw("Protocol", "cache", None), base=("--seeds", "2")),
        Changes(("--cache", "{dir}/cache", "--seeds", "2"),
                kw("Protocol", "cache", "{dir}/cache")),
        Refused(("--cache", ""), "--cache"),
        Refused(("--cache", "{file}"), "--cache"),
        Refused(("--cache", "{file}", "--seeds", "2"), "--cache"),
    ],
}

DEMO = {
    "--attention-model": [Changes(("--attention-model", OTHER),
                                  first_arg("AttentionCropper", OTHER))],
    "--attention-weights": [Changes(("--attention-weights", "{weights}"),
                                    kw("AttentionCropper", "weights", "{weights}"))],
    "--embedding-model": [Changes(("--embedding-model", OTHER), first_arg("CropEmbedder", OTHER))],
    "--embedding-weights": [Changes(("--embedding-weights", "{weights}"),
                                    kw("CropEmbedder", "weights", "{weights}"))],
    "--n-samples": [Changes(("--n-samples", "48"), first_arg("make_spurious_images", 48))],
    "--crop-sizes": [Changes(("--crop-sizes", "32,16"),
                             kw("AttentionCropper", "crop_sizes", (32, 16)))],
    "--image-size": [Changes(("--image-size", "96"), kw("CropEmbedder", "image_size", 96))],
    "--batch-size": [Changes(("--batch-size", "7"), kw("CropEmbedder", "batch_size", 7))],
    "--device": [Changes(("--device", "auto"), kw("CropEmbedder", "device", "auto"))],
    "--out": [Changes(("--out", "{dir}/elsewhere"),
                      same_path("draw_overlays", 0, "{dir}/elsewhere"))],
    "--no-plots": [Changes(("--no-plots",), lambda rec, names: not rec.called("draw_overlays"))],
    "--seed": [Changes(("--seed", "3"), kw("make_spurious_images", "random_state", 3))],
    "--overwrite": [Rewrites("results.json")],
}

LOCALIZE = {
    "--dataset": [Changes(("--dataset", "imagenet", "--root", "{loc}"),
                          called("load_imagenet_val"))],
    "--root": [Changes(("--root", "{dir}"), first_arg("load_imagenet_val", "{dir}"),
                       base=("--dataset", "imagenet", "--root", "{loc}")),
               Refused(("--root", "{loc}"), "--root")],
    "--cub-root": [Changes(("--cub-root", "{dir}"), kw("load_waterbirds", "cub_root", "{dir}"),
                           base=("--dataset", "waterbirds", "--root", "{loc}", "--cub-root",
                                 "{loc}")),
                   Refused(("--cub-root", "{loc}"), "--cub-root")],
    "--boxes": [Changes(("--boxes", "{dir}/b.csv"), kw("load_image_folder", "boxes",
                                                      "{dir}/b.csv"),
                        base=("--dataset", "folder", "--root", "{loc}", "--boxes",
                              "{loc}/boxes.csv")),
                Refused(("--dataset", "imagenet", "--root", "{loc}", "--boxes", "{loc}/b.csv"),
                        "--boxes")],
    "--split": [Changes(("--split", "val"),
                        lambda rec, names: list(rec.arg("localization_report", 1) or ())
                        == [fill("{loc}/b.png", names)],
                        base=("--dataset", "waterbirds", "--root", "{loc}", "--cub-root",
                              "{loc}")),
                Refused(("--split", "val"), "--split")],
    "--models": [Changes(("--models", OTHER), first_arg("AttentionCropper", OTHER))],
    "--weights": [Changes(("--weights", "{weights}"),
                          kw("AttentionCropper", "weights", "{weights}"))],
    "--layers": [Changes(("--layers", "last"), kw("localization_report", "layers", None))],
    "--head-aggregation": [Changes(("--head-aggregation", "max"),
                                   kw("AttentionCropper", "head_aggregation", "max"))],
    "--n-images": [Changes(("--n-images", "6"), first_arg("make_spurious_images", 6))],
    "--image-size": [Changes(("--image-size", "96"), kw("AttentionCropper", "image_size", 96))],
    "--batch-size": [Changes(("--batch-size", "7"), kw("AttentionCropper", "batch_size", 7))],
    "--device": [Changes(("--device", "auto"), kw("AttentionCropper", "device", "auto"))],
    "--cache": [Changes(("--cache", "{dir}/cache"), kw("AttentionCropper", "cache",
                                                        "{dir}/cache")),
                Changes(("--cache", "memory"), kw("AttentionCropper", "cache", "memory")),
                Refused(("--cache", ""), "--cache"),
                Refused(("--cache", "{file}"), "--cache")],
    "--seed": [Changes(("--seed", "3"), kw("make_spurious_images", "random_state", 3)),
               Refused(("--dataset", "imagenet", "--root", "{loc}", "--seed", "3"), "--seed")],
    "--out": [Changes(("--out", "{dir}/elsewhere"), lambda rec, names: Path(
        names["dir"], "elsewhere", "summary.json").is_file())],
    "--overwrite": [Rewrites("localization.csv")],
    "--report": [Changes(("--report",), same_path("write_report", 0, "{out}/report.html"))],
}

CROPS = {
    "images": [Changes(("{img2}",), lambda rec, names: len(
        rec.arg("AttentionCropper.transform") or ()) == 2)],
    "--recursive": [Changes(("--recursive",), lambda rec, names: len(
                        rec.arg("AttentionCropper.transform") or ()) == 4, base=("{tree}",)),
                    Refused(("--recursive",), "--recursive")],
    "--model": [Changes(("--model", OTHER), first_arg("AttentionCropper", OTHER))],
    "--weights": [Changes(("--weights", "{weights}"),
                          kw("AttentionCropper", "weights", "{weights}"))],
    "--crop-sizes": [Changes(("--crop-sizes", "32,16"),
                             kw("AttentionCropper", "crop_sizes", (32, 16)))],
    "--n-crops": [Changes(("--n-crops", "2"), kw("AttentionCropper", "n_crops", 2))],
    "--image-size": [Changes(("--image-size", "96"), kw("AttentionCropper", "image_size", 96))],
    "--no-heatmap": [Changes(("--no-heatmap",), kw("save_overlays", "heatmap", False))],
    "--batch-size": [Changes(("--batch-size", "7"), kw("AttentionCropper", "batch_size", 7))],
    "--device": [Changes(("--device", "auto"), kw("AttentionCropper", "device", "auto"))],
    "--out": [Changes(("--out", "{dir}/elsewhere"),
                      same_path("save_overlays", 2, "{dir}/elsewhere"))],
    "--overwrite": [Rewrites("one_crops.png")],
}

CASES = {"evaluate": EVALUATE, "demo": DEMO, "localize": LOCALIZE, "crops": CROPS}


# --------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------


def subparsers():
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def option_names(parser):
    names = []
    for action in parser._actions:
        if action.option_strings == ["-h", "--help"]:
            continue
        names.append(action.option_strings[-1] if action.option_strings else action.dest)
    return names


class Runner:
    def __init__(self, inputs, tmp_path, capsys, rec):
        self.inputs, self.tmp, self.capsys, self.rec = inputs, tmp_path, capsys, rec
        self.n = 0

    def fresh(self):
        self.n += 1
        d = self.tmp / f"run{self.n}"
        d.mkdir()
        return {**self.inputs, "dir": str(d), "out": str(d / "out")}

    def argv(self, command, extra, names):
        positionals = list(POSITIONALS.get(command, []))
        positionals += [e for e in extra if e in MORE_POSITIONALS]
        extra = [e for e in extra if e not in MORE_POSITIONALS]
        return [command, *positionals, *BASE[command], *extra], names

    def run(self, command, extra, names=None):
        names = names or self.fresh()
        argv, names = self.argv(command, list(extra), names)
        self.rec.events.clear()
        rc = main([fill(a, names) for a in argv])
        captured = self.capsys.readouterr()
        return rc, captured.err, names


def one_error_line(err, command):
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, err
    assert "Traceback" not in err, err
    last = lines[-1]
    assert re.match(rf"sk-a2 {command}: error: ", last), err
    assert not any("error:" in line for line in lines[:-1]), err
    return last


ALL_CASES = [(command, option, i, case) for command, table in CASES.items()
             for option, cases in table.items() for i, case in enumerate(cases)]


def test_every_option_has_a_row():
    for command, parser in subparsers().items():
        assert command in CASES, f"sk-a2 {command} has no table in CASES"
        options = option_names(parser)
        missing = [o for o in options if o not in CASES[command]]
        assert not missing, f"sk-a2 {command}: options without a row: {missing}"
        extra = [o for o in CASES[command] if o not in options]
        assert not extra, f"sk-a2 {command}: rows for unknown options: {extra}"
        for option in options:
            kinds = {type(c) for c in CASES[command][option]}
            assert kinds & {Changes, Rewrites}, f"sk-a2 {command} {option}: no effect tested"


def assert_no_work(rec):
    assert not rec.called("CropEmbedder.fit_transform") and not rec.called("run_rows")
    assert not rec.called("localization_report") and not rec.called("save_overlays")


def check_refused(runner, command, case):
    rc, err, names = runner.run(command, case.extra)
    assert rc == 2, err
    assert fill(case.needle, names) in one_error_line(err, command)
    assert_no_work(runner.rec)


def check_rewrites(runner, command, case):
    """Refused over an earlier run's file (which is kept), rewritten with --overwrite."""
    names = runner.fresh()
    out = Path(names["out"])
    out.mkdir()  # an existing empty folder is fine
    extra = ("--out", "{out}", *case.extra) if command == "evaluate" else case.extra
    rc, err, _ = runner.run(command, extra, names)
    assert rc == 0, err
    target = out / case.name
    target.write_text("earlier results")
    rc, err, _ = runner.run(command, extra, names)
    assert rc == 2, err
    line = one_error_line(err, command)
    assert "--overwrite" in line and case.name in line
    assert target.read_text() == "earlier results"
    assert_no_work(runner.rec)
    rc, err, _ = runner.run(command, (*extra, "--overwrite"), names)
    assert rc == 0, err
    if case.name.endswith(".png"):  # figures are written by a recorder here
        assert runner.rec.called("save_overlays")
    else:
        assert target.read_text() != "earlier results"


@pytest.mark.parametrize("command, option, i, case", ALL_CASES,
                         ids=[f"{c}{o}-{i}" for c, o, i, _ in ALL_CASES])
def test_option(command, option, i, case, inputs, tmp_path, capsys, rec):
    runner = Runner(inputs, tmp_path, capsys, rec)
    if isinstance(case, Refused):
        return check_refused(runner, command, case)
    if isinstance(case, Rewrites):
        return check_rewrites(runner, command, case)
    rc, err, names = runner.run(command, case.base)
    assert rc == 0, err
    assert not case.check(rec, names), f"the check holds without {option}"
    rc, err, names = runner.run(command, (*case.base, *case.extra))
    assert rc == 0, err
    assert case.check(rec, names), f"{option} did not reach the call it sets"
