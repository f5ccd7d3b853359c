"""The example scripts run end to end on tiny random-weight models."""

import importlib.util
from pathlib import Path

import pytest
import sklearn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import ``examples/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_grid_search_example(tiny_vit_file, tiny_vit_file2, capsys):
    grid_search = load_example("grid_search")
    argv = [
        "--attention-model", "timm:test_vit", "--attention-weights", str(tiny_vit_file),
        "--embedding-model", "timm:test_vit", "--embedding-weights", str(tiny_vit_file2),
        "--image-size", "64", "--crop-sizes", "32", "16", "--n-samples", "60", "--cv", "2",
        "--device", "cpu",
    ]
    assert grid_search.main(argv) == 0
    out = capsys.readouterr().out

    assert "best setting: {" in out and "'crop__model': 'timm:test_vit'" in out
    assert "best cross-validated worst-group accuracy:" in out
    n_candidates = len(grid_search.N_CROPS) * len(grid_search.LAYERS) * len(grid_search.C_VALUES)
    assert out.count("timm:test_vit ") == n_candidates
    report = out.split("on the test split")[1]
    for name in ("disk_on_land", "disk_on_water", "square_on_land", "square_on_water"):
        assert name in report
    for summary in ("accuracy", "group mean", "worst-group"):
        assert f"\n{summary} " in report
    assert not sklearn.get_config()["enable_metadata_routing"]


def test_grid_search_example_pairs_weights_with_models(capsys):
    grid_search = load_example("grid_search")
    with pytest.raises(SystemExit):
        grid_search.main(["--attention-model", "a", "--attention-model", "b",
                          "--attention-weights", "a.safetensors"])
    assert "one --attention-weights per --attention-model" in capsys.readouterr().err


def test_adapter_celeba_example(tiny_vit_file, tiny_vit_file2, tmp_path, capsys):
    example = load_example("adapter_celeba")
    argv = [
        "--attention-model", "timm:test_vit", "--attention-weights", str(tiny_vit_file),
        "--embedding-model", "timm:test_vit", "--embedding-weights", str(tiny_vit_file2),
        "--image-size", "64", "--n-synthetic", "40", "--epochs", "2", "--device", "cpu",
        "--n-overlays", "2", "--out", str(tmp_path / "out"),
    ]
    assert example.main(argv) == 0
    out = capsys.readouterr().out
    assert "A², default attention" in out and "A² + adapter" in out
    assert "blond_male" in out and "epoch 2/2: held-out loss" in out
    pngs = sorted((tmp_path / "out").glob("overlay_*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_write_synthetic_csv_example_is_read_back_by_load_csv(tmp_path):
    import numpy as np

    from sk_a2.datasets import load_csv, make_spurious_images
    from sk_a2.images import load_rgb

    path = load_example("write_synthetic_csv").write_synthetic_csv(tmp_path, n_samples=40,
                                                                   image_size=32)
    data = make_spurious_images(40, image_size=32, random_state=0)
    read = load_csv(path, image_column="image", target_column="shape",
                    group_column="background", split_column="split")
    for split in ("train", "val", "test"):
        rows = np.flatnonzero(np.asarray(read.split) == split)
        expected = np.flatnonzero(data.split == split)
        assert [Path(read.images[r]).name for r in rows] == [f"{i:04d}.png" for i in expected]
        np.testing.assert_array_equal(np.asarray(read.target)[rows], data.target[expected])
        np.testing.assert_array_equal(load_rgb(read.images[rows[0]]), data.images[expected[0]])
