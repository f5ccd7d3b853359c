"""The CUDA path against the CPU path: IEEE float32, float32 boxes and bf16 embeddings under
``"auto"``, reruns, the shared forward, pickles and zero-shot scores.

These tests need a CUDA device and are skipped without one (CI has none); run them on a GPU
machine with ``python -m pytest tests/test_cuda.py``.
"""

import pickle

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP, blob_images, make_clip
from safetensors.torch import save_file

from sk_a2 import AttentionCropper, CropEmbedder
from sk_a2.zeroshot import ZeroShotCLIPClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _kw(weights, device, **extra):
    return dict(weights=weights, image_size=64, device=device, batch_size=4, **extra)


def _a2(weights, device, precision="float32", **cropper_kw):
    X = blob_images(12, seed=5)[0]
    cropper = AttentionCropper("timm:test_vit", crop_sizes=(32, 16), precision=precision,
                               **_kw(weights, device), **cropper_kw).fit()
    cs = cropper.transform(X)
    emb = CropEmbedder("timm:test_vit", precision=precision, **_kw(weights, device))
    return cs, emb.fit(cs).transform(cs), cropper.attention_maps(X)


def test_float32_on_cuda_matches_cpu(tiny_vit_file):
    cs_cpu, emb_cpu, maps_cpu = _a2(tiny_vit_file, "cpu")
    cs_gpu, emb_gpu, maps_gpu = _a2(tiny_vit_file, "cuda")
    np.testing.assert_allclose(maps_gpu, maps_cpu, atol=1e-6)
    # a random ViT's map is nearly flat, so a box may flip between near-equal sums: the first
    # box holds the same attention mass, and most boxes are the same
    np.testing.assert_allclose(cs_gpu.scores[:, 0], cs_cpu.scores[:, 0], atol=1e-6)
    same = np.all(cs_gpu.boxes == cs_cpu.boxes, axis=(1, 2))
    assert same.mean() >= 0.75
    np.testing.assert_allclose(emb_gpu[same], emb_cpu[same], atol=1e-4)


def test_auto_on_cuda_keeps_float32_boxes_and_embeds_in_bf16(tiny_vit_file):
    cs32, emb32, _ = _a2(tiny_vit_file, "cuda", "float32")
    cs_auto, emb_auto, _ = _a2(tiny_vit_file, "cuda", "auto")
    assert np.array_equal(cs_auto.boxes, cs32.boxes)
    bf16 = CropEmbedder("timm:test_vit", precision="bfloat16", **_kw(tiny_vit_file, "cuda"))
    np.testing.assert_array_equal(emb_auto, bf16.fit(cs32).transform(cs32))
    assert not np.array_equal(emb_auto, emb32)
    a, b = emb_auto.reshape(len(emb_auto), -1), emb32.reshape(len(emb32), -1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_reruns_on_cuda_are_identical(tiny_vit_file):
    first = _a2(tiny_vit_file, "cuda", "auto")
    second = _a2(tiny_vit_file, "cuda", "auto")
    assert np.array_equal(first[0].boxes, second[0].boxes)
    np.testing.assert_array_equal(first[1], second[1])


def test_float32_on_cuda_is_ieee(tiny_vit_file):
    # the caller allows TF32; precision="float32" still computes in IEEE float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        maps_gpu = _a2(tiny_vit_file, "cuda")[2]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False  # torch's default; cudnn's is True
    np.testing.assert_allclose(maps_gpu, _a2(tiny_vit_file, "cpu")[2], atol=1e-6)


def test_shared_forward_on_cuda_equals_separate(tiny_vit_file):
    X = blob_images(6, seed=2)[0]
    kw = _kw(tiny_vit_file, "cuda", precision="float32")
    emb = CropEmbedder("timm:test_vit", include_full_image=True, **kw)
    cs = AttentionCropper("timm:test_vit", crop_sizes=(32,), **kw).fit().transform(X)
    shared = AttentionCropper("timm:test_vit", crop_sizes=(32,), embed_full_image=True,
                              **kw).fit().transform(X)
    np.testing.assert_allclose(emb.fit(shared).transform(shared), emb.fit(cs).transform(cs),
                               atol=1e-4)


def test_pickled_cuda_estimator_runs_on_cuda(tiny_vit_file):
    X = blob_images(4, seed=1)[0]
    cropper = AttentionCropper("timm:test_vit", crop_sizes=(32,),
                               **_kw(tiny_vit_file, "cuda")).fit()
    before = cropper.transform(X)
    loaded = pickle.loads(pickle.dumps(cropper))
    assert loaded.device == "cuda"
    assert np.array_equal(loaded.transform(X).boxes, before.boxes)


def test_zero_shot_on_cuda_matches_cpu(tmp_path):
    path = tmp_path / "clip.safetensors"
    save_file(make_clip(seed=3).state_dict(), str(path))
    X, y = blob_images(8, seed=4)
    scores = {}
    for device in ("cpu", "cuda"):
        zs = ZeroShotCLIPClassifier(f"open_clip:{TINY_CLIP}:", weights=path,
                                    classnames=["blue", "red"], precision="float32",
                                    image_size=64, device=device, batch_size=4).fit(X, y)
        scores[device] = zs.predict_proba(X)
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], atol=1e-4)


# ---- the data path on CUDA: pinned uint8 transfers, nvJPEG decoding, PIL-exact resize ------


def _jpeg_files(tmp_path, n=8):
    from PIL import Image

    X = blob_images(n, size=96, seed=7)[0]
    paths = []
    for i, img in enumerate(X):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(str(p))
    return paths


def test_pil_bicubic_on_cuda_is_byte_identical_to_pil():
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from sk_a2.resize import pil_bicubic

    for photo in load_sample_images().images:
        for size in (224, 64, (300, 500)):
            h, w = (size, size) if isinstance(size, int) else size
            ref = np.asarray(Image.fromarray(photo).resize((w, h), Image.BICUBIC))
            got = pil_bicubic(torch.from_numpy(photo.copy()).cuda(), size)
            assert got.device.type == "cuda"
            np.testing.assert_array_equal(got.cpu().numpy(), ref)


def test_cpu_decoder_batches_on_cuda_equal_cpu_batches(tmp_path):
    from sk_a2._data import iter_image_batches

    paths = _jpeg_files(tmp_path)

    def batches(device):
        return [x.cpu() for _, x, _ in iter_image_batches(
            paths, 64, batch_size=3, num_workers=2, device=torch.device(device), decoder="cpu")]

    for a, b in zip(batches("cpu"), batches("cuda")):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_nvjpeg_decoder_close_to_pil(tiny_vit_file, tmp_path):
    pytest.importorskip("torchvision")
    from sk_a2._data import iter_image_batches

    paths = _jpeg_files(tmp_path)

    def batches(decoder):
        return torch.cat([x.cpu() for _, x, _ in iter_image_batches(
            paths, 64, batch_size=3, num_workers=2, device=torch.device("cuda"),
            decoder=decoder)])

    cpu, gpu = batches("cpu"), batches("cuda")
    assert (gpu - cpu).abs().max().item() <= 4 / 255  # nvJPEG's IDCT is not libjpeg's
    cs_cpu = AttentionCropper("timm:test_vit", crop_sizes=(32,), decoder="cpu",
                              **_kw(tiny_vit_file, "cuda")).fit().transform(paths)
    cs_gpu = AttentionCropper("timm:test_vit", crop_sizes=(32,), decoder="cuda",
                              **_kw(tiny_vit_file, "cuda")).fit().transform(paths)
    np.testing.assert_allclose(cs_gpu.scores, cs_cpu.scores, atol=1e-3)
