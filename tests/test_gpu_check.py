"""``benchmarks/gpu_check.py`` dry-run on the CPU with tiny sizes and tiny models, so that the
device check cannot rot; and its FLOP count against the closed form of a standard ViT."""

import importlib.util
import json
from pathlib import Path

import pytest
import timm

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_image_is_the_closed_form_of_a_standard_vit():
    """12 L T d^2 (qkv, projection) + 16 L T d^2 (MLP at ratio 4) + 4 L T^2 d + the patch
    embedding: written out by hand for a ViT-S/16 (mlp ratio 4) of 2 blocks at 64 px."""
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                              img_size=64, depth=2)
    L, d, p = len(model.blocks), model.embed_dim, 16
    patches = (64 // p) ** 2
    T = patches + 1
    assert (L, d) == (2, 384)
    expected = L * (8 * T * d * d + 16 * T * d * d + 4 * T * T * d) + 2 * patches * 3 * p * p * d
    assert _gpu_check().vit_flops_per_image(model) == expected


def test_peak_table_and_unknown_devices():
    check = _gpu_check()
    assert check.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert check.peak_bf16("NVIDIA H200") == 989e12
    assert check.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert check.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert check.peak_bf16("cpu") is None


@pytest.mark.filterwarnings("ignore:precision='bfloat16' on a CPU")  # emulated bf16: tiny sizes
def test_dry_run_on_cpu_prints_every_row(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance of another test module is running")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "check.json"
    results = _gpu_check().main([
        "--device", "cpu", "--n-images", "4", "--giant-images", "2", "--batch-size", "4",
        "--model", "timm:test_vit", "--giant-model", "test_vit", "--precisions", "float32",
        "--num-workers", "0",
        "--skip-tests", "--ray-cpus", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    for row in ("A² timm:test_vit float32, 4 JPEG", "vs bare forwards", "vs naive loop",
                "test_vit bf16 embeddings", "GFLOP/image", "bare MFU", "n/a",
                "first call / in-process", "second call / in-process"):
        assert row in printed, printed
    saved = json.loads(out.read_text())
    assert set(saved) >= {"vits", "giant", "ray", "device", "n_images"}
    vits = saved["vits"]["float32"]
    giant, ray_calls = saved["giant"], saved["ray"]
    numbers = [vits["a2_images_per_s"], vits["a2_vs_bare"], vits["a2_vs_naive"],
               giant["flops_per_image"], giant["a2_images_per_s"], giant["bare_images_per_s"],
               ray_calls["ratio"]["ray_first"], ray_calls["ratio"]["ray_second"]]
    assert all(isinstance(v, (int, float)) and v > 0 for v in numbers), numbers
    assert giant["a2_mfu"] == giant["bare_mfu"] == "n/a"  # no bf16 peak known for a CPU
    assert ray_calls["n_images"] == 4 and results["n_images"] == 4
