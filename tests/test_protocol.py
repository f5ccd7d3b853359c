"""The paper's protocol: presets, reported values, seeds, tuning, cross-model matrices."""

import csv
import json
import warnings

import numpy as np
import pytest
import sklearn
from repro_layouts import count_forwards, tiny_vit_weights, write_waterbirds
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, ParameterGrid, PredefinedSplit
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper, CropEmbedder, worst_group_scorer
from sk_a2.datasets import load_waterbirds
from sk_a2.paper.presets import PAPER_DATASETS, PresetError, paper_preset
from sk_a2.paper.protocol import (
    CrossModelMatrix,
    EvalData,
    ModelRef,
    Protocol,
    RowSpec,
    compare_specs,
    default_tune_grid,
    parse_model_list,
    score_predictions,
)
from sk_a2.paper.reported import match_reported, reported_values

SIZE = 64  # model input of the tiny ViTs (patch 16: a 4 x 4 attention grid)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    return {"root": write_waterbirds(root / "wb"),
            "a": tiny_vit_weights(root / "attn_a.safetensors", 10),
            "b": tiny_vit_weights(root / "attn_b.safetensors", 11),
            "e": tiny_vit_weights(root / "emb_e.safetensors", 12),
            "f": tiny_vit_weights(root / "emb_f.safetensors", 13)}


@pytest.fixture(scope="module")
def data(files):
    return EvalData.from_bunch("waterbirds", load_waterbirds(files["root"]))


def _protocol(data, cache, **kwargs):
    return Protocol(data, cache=str(cache), image_size=SIZE, device="cpu", **kwargs)


def _ref(files, key):
    return ModelRef("timm:test_vit", files[key])


# ------------------------------------------------------------------------------------ presets


# (dataset, head) -> crop sizes, fit split, DFR tuning share, attention, embedding, metric;
# written from Tables 1, 6, 8-10 and Appendix I of the paper
PAPER = {
    ("waterbirds", "lr"): ((64,), "train", None, "vits14", "vitg14", "worst_group"),
    ("waterbirds", "dfr"): ((64,), "val", 0.5, "vits14", "vits14", "worst_group"),
    ("spawrious_o2o_hard", "dfr"): ((64, 32), "train", 0.2, "vits14", "vits14", "worst_group"),
    ("spawrious_m2m_hard", "lr"): ((64, 32), "train", None, "vits14", "vitg14", "worst_group"),
    ("metashift_cvd", "dfr"): ((64, 32), "train", 0.2, "vits14", "vits14", "worst_group"),
    ("metashift_animals", "lr"): ((64, 32), "train", None, "vits14", "vitg14", "worst_class"),
    ("metashift_animals", "zs"): ((128,), "train", None, "vits14", "openclip_vitl14",
                                  "worst_class"),
}


@pytest.mark.parametrize("key", list(PAPER))
def test_paper_preset_matches_the_paper(key):
    sizes, fit_split, fraction, attention, embedding, metric = PAPER[key]
    p = paper_preset(*key)
    assert p.crop_sizes == sizes
    assert p.fit_split == fit_split and p.dfr_tune_fraction == fraction
    assert p.attention_model.endswith(attention) and p.embedding_model.endswith(embedding)
    assert p.metric == f"{metric}_accuracy"
    assert p.center_crop_sizes == (128,) and p.image_size == 224 and p.seeds == 5
    assert json.loads(json.dumps(p.to_dict()))["crop_sizes"] == list(sizes)


def test_paper_preset_rejects_unknown_dataset_and_head():
    with pytest.raises(PresetError, match="'celeba'.*waterbirds, spawrious_o2o_hard"):
        paper_preset("celeba", "lr")
    with pytest.raises(PresetError, match="head must be one of lr, dfr, zs"):
        paper_preset("waterbirds", "svm")
    p = paper_preset("waterbirds").replace(seeds=3)
    assert p.seeds == 3 and paper_preset("waterbirds").seeds == 5
    with pytest.raises(PresetError, match="unknown preset setting"):
        p.replace(n_seeds=3)


# ----------------------------------------------------------------------------------- reported


def _value(table, dataset, metric, **config):
    hits = [r for r in reported_values() if r.table == table and r.dataset == dataset
            and r.metric == metric and all(getattr(r, k) == v for k, v in config.items())]
    assert len(hits) == 1, (table, dataset, metric, config, hits)
    return hits[0]


def test_reported_values_cover_the_tables():
    rows = reported_values()
    tables = {r.table for r in rows}
    expected = {"1", "2", *map(str, range(6, 16)), *map(str, range(24, 31))}
    assert tables == expected
    assert all(0 < r.value <= 100 for r in rows)
    assert {r.dataset for r in rows} == set(PAPER_DATASETS) | {"mean_5"}
    # spot checks typed from the paper
    assert _value("13", "waterbirds", "worst_group_accuracy", attention_model="dinov2_vits14",
                  embedding_model="dinov2_vitg14").value == 94.4
    r = _value("7", "spawrious_o2o_hard", "worst_group_accuracy", method="a2", head="dfr")
    assert (r.value, r.std) == (88.8, 1.2)
    assert _value("10", "metashift_animals", "worst_class_accuracy", method="center",
                  embedding_model="dinov2_vitg14").value == 72.4


def test_reported_tables_agree_with_each_other():
    """The paper repeats numbers across tables; the data file must repeat them identically."""
    wga = {"waterbirds": ("8", "13"), "metashift_cvd": ("9", "14"),
           "metashift_animals": ("10", "15")}
    for dataset, (full_table, matrix) in wga.items():
        metric = "worst_class_accuracy" if dataset == "metashift_animals" else \
            "worst_group_accuracy"
        for size in ("s", "b", "l", "g"):
            model = f"dinov2_vit{size}14"
            diag = _value(matrix, dataset, metric, attention_model=model, embedding_model=model)
            row = _value(full_table, dataset, metric, method="a2", head="lr",
                         attention_model=model, embedding_model=model)
            assert diag.value == row.value, (dataset, model)
        headline = _value("1", dataset, metric, method="a2", head="lr",
                          embedding_model="dinov2_vitg14")
        assert headline.value == _value(matrix, dataset, metric,
                                        attention_model="dinov2_vits14",
                                        embedding_model="dinov2_vitg14").value
    for dataset, matrix in (("spawrious_o2o_hard", "11"), ("spawrious_m2m_hard", "12")):
        same = _value(matrix, dataset, "accuracy", attention_model="dinov2_vits14",
                      embedding_model="dinov2_vits14")
        assert same.value == _value("2", dataset, "accuracy", method="a2", head="lr",
                                    embedding_model="dinov2_vits14").value


def test_match_reported():
    found = match_reported(dataset="waterbirds", method="a2", head="lr",
                           attention_model="dinov2_vits14=/w/s.pth",
                           embedding_model="dinov2_vitg14", crop_sizes=(64,))
    assert {r.table for r in found["worst_group_accuracy"]} == {"1", "8", "13"}
    assert {r.value for r in found["worst_group_accuracy"]} == {94.4}
    assert match_reported(dataset="waterbirds", method="a2", head="lr",
                          attention_model="dinov2_vits14", embedding_model="dinov2_vitg14",
                          crop_sizes=(64, 32)) == {}
    full = match_reported(dataset="metashift_cvd", method="full", head="dfr",
                          attention_model="anything", embedding_model="dinov2_vits14",
                          crop_sizes=(64, 32), metrics=("worst_group_accuracy",))
    assert [(r.table, r.value, r.std) for r in full["worst_group_accuracy"]] == [
        ("1", 54.5, None), ("9", 54.5, 3.9)]
    assert match_reported(dataset="waterbirds", method="full", head="lr",
                          embedding_model="timm:test_vit") == {}


def test_parse_model_list(tmp_path):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    assert parse_model_list(f"dinov2_vits14, timm:test_vit={w}") == [
        ModelRef("dinov2_vits14"), ModelRef("timm:test_vit", str(w))]
    for text, needle in (("dinov2_vits14,dinov2_vtb14", "Did you mean 'dinov2_vitb14'"),
                         ("dinov2_vits14,", "empty entry"),
                         (f"timm:test_vit={tmp_path / 'no.pth'}", "does not exist"),
                         ("dinov2_vits14,dinov2_vits14", "twice")):
        with pytest.raises(ValueError, match=needle):
            parse_model_list(text, "--attention-models")


# ------------------------------------------------------------------------------------ protocol


def _pipeline_oracle(data, files, attention, embedding, sizes, crop_source="resized"):
    """A²_LR written directly with the estimators: test scores."""
    tr, te = data.mask("train"), data.mask("test")
    crop = AttentionCropper("timm:test_vit", weights=files[attention], crop_sizes=sizes,
                            image_size=SIZE, device="cpu").fit()
    emb = CropEmbedder("timm:test_vit", weights=files[embedding], image_size=SIZE, device="cpu",
                       crop_source=crop_source)
    F = emb.fit_transform(crop.transform(data.images.tolist()))
    pred = LogisticRegression(max_iter=5000).fit(F[tr], data.y[tr]).predict(F[te])
    return score_predictions(data.y[te], pred, data.groups[te], data.groups[tr])


def _distinct_boxes(cropset):
    return {(i, tuple(np.round(b, 3))) for i, boxes in enumerate(cropset.boxes) for b in boxes}


def test_cross_model_matrix_runs_each_model_once(data, files, tmp_path):
    proto = _protocol(data, tmp_path / "cache")
    attentions, embeddings = [_ref(files, "a"), _ref(files, "b")], [_ref(files, "e"),
                                                                     _ref(files, "f")]
    with count_forwards([files[k] for k in "abef"], SIZE) as counts:
        matrix = proto.cross_model_matrix(attentions, embeddings, crop_sizes=(32, 16),
                                          seeds=[0, 1])
    n = len(data.images)
    assert sum(counts[files["a"]]) == n and sum(counts[files["b"]]) == n
    boxes = set()  # an (image, box) chosen by both attention models is embedded once
    for a in attentions:
        _, cropset = proto.crops(RowSpec("a2", "lr", embeddings[0], a, (32, 16)))
        boxes |= _distinct_boxes(cropset)
    assert sum(counts[files["e"]]) == sum(counts[files["f"]]) == len(boxes)
    expected = _pipeline_oracle(data, files, "b", "f", (32, 16))
    cell = matrix.cells[(1, 1)]
    assert cell["per_seed"] == [expected, expected]  # LR (lbfgs) is deterministic
    assert cell["std"]["accuracy"] == 0.0
    assert matrix.values("accuracy")[1, 1] == expected["accuracy"]
    assert "attn \\ emb" in matrix.format("accuracy")
    lines = matrix.to_csv(tmp_path / "m.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("attention_model,embedding_model,accuracy_mean")


def test_matrix_shows_the_reported_value_beside_the_measured_one(tmp_path):
    models = [ModelRef("dinov2_vits14"), ModelRef("dinov2_vitg14")]
    cells = {}
    for i, a in enumerate(models):
        for j, e in enumerate(models):
            found = match_reported(dataset="waterbirds", method="a2", head="lr",
                                   attention_model=a.name, embedding_model=e.name,
                                   crop_sizes=(64,))
            value = 0.5 + 0.1 * i + 0.01 * j
            cells[(i, j)] = {"mean": {"worst_group_accuracy": value},
                             "std": {"worst_group_accuracy": 0.02},
                             "reported": {m: [r.to_dict() for r in rs] for m, rs in found.items()}}
    matrix = CrossModelMatrix(models, models, cells)
    lines = matrix.format("worst_group_accuracy").splitlines()
    assert lines[1].split() == ["dinov2_vits14", "50.0", "±", "2.0", "[T1:", "80.4]", "51.0",
                                "±", "2.0", "[T1:", "94.4]"]
    assert lines[2].split()[-3:] == ["2.0", "[T8:", "89.9]"]  # ViT-G x ViT-G: Tables 8, 13
    rows = list(csv.DictReader(open(matrix.to_csv(tmp_path / "m.csv",
                                                  metrics=("worst_group_accuracy",)))))
    assert [float(r["worst_group_accuracy_paper"]) for r in rows] == pytest.approx(
        [0.804, 0.944, 0.717, 0.899])


def test_seeds_vary_only_the_stochastic_rows(data, files, tmp_path):
    proto = _protocol(data, tmp_path / "cache")
    specs = compare_specs(_ref(files, "a"), _ref(files, "e"), crop_sizes=(32,),
                          center_crop_sizes=(32,))
    assert [s.key for s in specs] == ["full_lr", "full_dfr", "center_lr", "center_dfr",
                                      "random_lr", "random_dfr", "a2_lr", "a2_dfr",
                                      "a2_original_lr", "a2_original_dfr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = {r["key"]: r for r in proto.run_rows(specs, seeds=[0, 1, 2])}
    for key, row in rows.items():
        assert len(row["per_seed"]) == 3
        for m in ("accuracy", "worst_group_accuracy"):
            values = [s[m] for s in row["per_seed"]]
            assert row["mean"][m] == pytest.approx(sum(values) / 3)
            assert row["std"][m] == pytest.approx(np.std(values))
        if key in ("full_lr", "center_lr", "a2_lr", "a2_original_lr"):
            assert row["std"]["accuracy"] == 0.0
    assert rows["a2_lr"]["per_seed"][0] == _pipeline_oracle(data, files, "a", "e", (32,))
    # beyond the paper: the same boxes, cut from the original pixels (no reported value)
    original = rows["a2_original_lr"]
    assert original["per_seed"][0] == _pipeline_oracle(data, files, "a", "e", (32,), "original")
    assert original["crop_source"] == "original" and rows["a2_lr"]["crop_source"] == "resized"
    assert original["reported"] == {} and "original pixels" in original["label"]
    assert rows["full_lr"]["crop_source"] == "resized"
    # random crops: other boxes for another seed
    boxes = [proto.crops(specs[4], seed)[1].boxes for seed in (0, 1)]
    assert not np.array_equal(*boxes)
    assert proto.fit_split("dfr") == "val" and proto.dfr_mode == "val"
    with pytest.raises(ValueError, match="seeds is empty"):
        proto.run_row(specs[0], seeds=[])


def test_tune_picks_what_an_explicit_grid_search_picks(data, files, tmp_path):
    cache = str(tmp_path / "cache")
    proto = _protocol(data, cache)
    spec = RowSpec("a2", "lr", _ref(files, "e"), _ref(files, "a"), (32, 16))
    grid = {"crop__crop_sizes": [(32, 16), (16,)], "crop__n_crops": [1, 2],
            "crop__layer": [-1, -2], "lr__C": [0.01, 1.0]}
    rows = np.flatnonzero(data.split != "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with count_forwards([files["a"], files["e"]], SIZE) as counts:
            tuned = proto.tune(spec, grid)
        # cost: one attention pass for both layers, one embedding per distinct (image, box)
        boxes = set()
        for params in ParameterGrid(grid):
            crop = AttentionCropper("timm:test_vit", weights=files["a"], image_size=SIZE,
                                    device="cpu", cache=cache,
                                    **{k.split("__")[1]: v for k, v in params.items()
                                       if k.startswith("crop__")})
            boxes |= _distinct_boxes(crop.fit().transform(data.images[rows].tolist()))
        assert sum(counts[files["a"]]) == len(rows)
        assert sum(counts[files["e"]]) == len(boxes)
        pipe = Pipeline([
            ("crop", AttentionCropper("timm:test_vit", weights=files["a"], image_size=SIZE,
                                      device="cpu", cache=cache)),
            ("emb", CropEmbedder("timm:test_vit", weights=files["e"], image_size=SIZE,
                                 device="cpu", cache=cache)),
            ("lr", LogisticRegression(max_iter=5000)),
        ])
        folds = PredefinedSplit(np.where(data.split[rows] == "val", 0, -1))
        with (sklearn.config_context(enable_metadata_routing=True),
              count_forwards([files["a"], files["e"]], SIZE) as again):
            search = GridSearchCV(pipe, grid, scoring=worst_group_scorer, cv=folds, refit=False)
            search.fit(data.images[rows].tolist(), data.y[rows], groups=data.groups[rows])
        assert again == {files["a"]: [], files["e"]: []}  # all read back from the cache
    assert tuned.best_params == search.best_params_
    assert tuned.best_score == search.best_score_
    assert [r["score"] for r in tuned.table] == list(search.cv_results_["mean_test_score"])
    assert len(tuned.table) == 16
    json.dumps(tuned.to_dict())


def test_default_tune_grid_keeps_crop_counts_that_fit():
    grids = default_tune_grid((64,), 224)
    assert [(g["crop__crop_sizes"], g["crop__n_crops"]) for g in grids] == [
        ([(64,)], [1, 2, 3]), ([(128,)], [1])]
    assert all(g["crop__layer"] == [-1, -2] and g["lr__C"] == [0.1, 1.0, 10.0] for g in grids)
    assert [g["crop__crop_sizes"] for g in default_tune_grid((128,), 224)] == [[(128,)]]


def test_tune_needs_a_val_split(data, files, tmp_path):
    no_val = EvalData(data.name, data.images, data.y, data.groups,
                      np.where(data.split == "val", "train", data.split))
    proto = _protocol(no_val, tmp_path / "cache")
    spec = RowSpec("a2", "lr", _ref(files, "e"), _ref(files, "a"), (32,))
    with pytest.raises(ValueError, match="needs a 'val' split.*val_size"):
        proto.tune(spec)
    assert proto.dfr_mode == "train"


def test_one_table_of_benchmark_settings():
    """The loaders' registry, the presets and the CLI read the same per-benchmark settings."""
    from sk_a2.cli import evaluate
    from sk_a2.datasets import get_benchmark, list_benchmarks
    from sk_a2.paper.benchmarks import BENCHMARK_SETTINGS, PAPER_BENCHMARKS

    assert list_benchmarks() == list(BENCHMARK_SETTINGS) == list(evaluate.BENCHMARKS)
    assert {n for n, s in BENCHMARK_SETTINGS.items() if s.tables} == set(PAPER_BENCHMARKS)
    for name, settings in BENCHMARK_SETTINGS.items():
        benchmark = get_benchmark(name)
        assert benchmark.crop_sizes == settings.crop_sizes
        assert benchmark.report_worst_class == (settings.metric == "worst_class_accuracy")
    for name in PAPER_BENCHMARKS:
        for head in ("lr", "dfr"):
            preset = paper_preset(name, head)
            assert preset.crop_sizes == get_benchmark(name).crop_sizes
            assert preset.metric == BENCHMARK_SETTINGS[name].metric
