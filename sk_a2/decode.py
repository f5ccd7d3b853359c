"""Which decoder turns image files into pixels: PIL on the CPU, or nvJPEG on a CUDA device.

The ``decoder`` parameter of :class:`~sk_a2.AttentionCropper` and :class:`~sk_a2.CropEmbedder`:

``"cpu"``
    Every image is decoded by PIL (:func:`sk_a2.images.load_rgb`) and resized by PIL's bicubic
    filter, in the loader's threads.
``"cuda"``
    JPEG files are decoded on the CUDA device in batches (``torchvision.io.decode_jpeg`` on a
    list of byte tensors, nvJPEG) and resized there by :func:`sk_a2.resize.pil_bicubic`, which
    gives PIL's bytes exactly. Needs a CUDA ``device`` and torchvision.
``"auto"`` (the default)
    ``"cuda"`` where the device is CUDA and torchvision is installed, else ``"cpu"``.

With ``"cuda"``, what nvJPEG cannot take goes the CPU way, image by image: other formats (PNG,
...), in-memory images, JPEG files that are progressive, CMYK or grayscale, carry an EXIF
orientation or are larger than ``PIL.Image.MAX_IMAGE_PIXELS``, and any file whose device decode
fails, so that a broken file is reported by the CPU path's error naming ``X[i]`` and the file.

nvJPEG's inverse DCT and chroma upsampling are not libjpeg-turbo's: device-decoded pixels can
differ from PIL's by a grey level or two, which can move a box where two candidate positions hold
nearly the same attention. The share of images whose boxes stay identical is measured in
``docs/performance.md``.
"""

from __future__ import annotations

import os
import warnings

import torch
from PIL import Image

from .images import exif_orientation
from .resize import pass_order, pil_bicubic

__all__ = ["DECODERS", "check_decoder", "decode_jpeg_batch", "device_jpeg", "resolve_decoder"]

#: Accepted values of the ``decoder`` parameter.
DECODERS = ("auto", "cpu", "cuda")


def _torchvision_decode():
    """``torchvision.io.decode_jpeg``, or None where torchvision is missing."""
    try:
        with warnings.catch_warnings():  # torchvision >= 0.29 announces TorchCodec's decoders
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg
    except Exception:
        return None
    return decode_jpeg


def check_decoder(decoder, device) -> None:
    """Refuse ``decoder="cuda"`` without a CUDA ``device`` or without torchvision."""
    if decoder != "cuda":
        return
    if device.type != "cuda":
        raise ValueError(
            f"decoder='cuda' decodes JPEG files on the CUDA device, but device is {str(device)!r};"
            " pass device='cuda', or decoder='auto' / 'cpu'"
        )
    if _torchvision_decode() is None:
        raise ValueError("decoder='cuda' needs torchvision (pip install torchvision); or pass "
                         "decoder='auto' / 'cpu'")


def resolve_decoder(decoder, device) -> str:
    """``"cpu"`` or ``"cuda"``: the decoder that runs for ``decoder`` on ``device``."""
    check_decoder(decoder, device)
    if decoder == "auto":
        return "cuda" if device.type == "cuda" and _torchvision_decode() is not None else "cpu"
    return decoder


def device_jpeg(source, size=None):
    """The bytes of ``source`` when nvJPEG can decode it to what PIL gives (a baseline RGB JPEG
    file without EXIF orientation, within PIL's pixel limit), else None (the CPU path).

    With ``size``, the order of the resize's passes to ``size × size``
    (:func:`sk_a2.resize.pass_order`) is looked up here, in the loader's threads, so that the
    device resize does not wait for it."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        with Image.open(source) as img:
            if (img.format != "JPEG" or img.mode != "RGB" or img.info.get("progressive")
                    or img.info.get("progression") or exif_orientation(img) != 1):
                return None
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                return None
            if size is not None and img.width != size and img.height != size:
                pass_order(img.height, img.width, size, size)
        with open(source, "rb") as f:
            return f.read()
    except Exception:
        return None  # unreadable: the CPU path raises the documented error


def _decode_one(decode_jpeg, data, mode, device):
    try:
        return decode_jpeg(data, mode=mode, device=device)
    except Exception:
        return None


def decode_jpeg_batch(datas, size, device):
    """Decode JPEG ``datas`` (bytes) on ``device`` and resize each to ``size × size``.

    Returns one ``((size, size, 3) uint8 tensor on device, (H, W))`` per input, or None where
    the device decode failed (the caller decodes that one on the CPU).
    """
    decode_jpeg = _torchvision_decode()
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    from torchvision.io import ImageReadMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        except Exception:  # one bad file fails the batch: decode them one by one
            images = [_decode_one(decode_jpeg, t, ImageReadMode.RGB, device) for t in tensors]
    out = []
    for img in images:
        if img is None:
            out.append(None)
            continue
        hwc = img.permute(1, 2, 0)
        out.append((pil_bicubic(hwc, size).contiguous(), tuple(int(v) for v in hwc.shape[:2])))
    return out
