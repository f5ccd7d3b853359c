"""Turning image sources into RGB pixels, with one documented conversion per input kind.

Accepted image sources (``X`` of every estimator here):

* a sequence (list, tuple, 1-D object array, pandas Series) of file paths (``str`` or
  :class:`pathlib.Path`), :class:`PIL.Image.Image` objects or NumPy arrays;
* one ``(n, H, W, 3)`` (or ``(n, H, W)``) ``uint8`` array. A 3-D array whose last axis is 3 or 4
  is refused: it is one ``(H, W, 3)`` / ``(H, W, 4)`` image far more often than a stack of
  grayscale images 3 or 4 pixels wide, so pass ``[img]`` or ``img[None]``.

Conversions, applied per image:

* EXIF orientation of files and PIL images is applied (:func:`PIL.ImageOps.exif_transpose`);
* grayscale (``L``, ``(H, W)`` or ``(H, W, 1)`` arrays) is repeated into three channels;
* RGBA / LA: the alpha channel is dropped (no compositing); palette images go through RGBA;
* 16-bit (``I;16`` images, ``uint16`` arrays) and 32-bit integer images are scaled to 8 bit by
  ``round(v / 257)`` after clipping to ``[0, 65535]``;
* CMYK, YCbCr and other PIL modes are converted with PIL's ``convert("RGB")``.

Anything else (float, bool or signed-integer arrays, wrong shapes, empty images, unreadable
files, paths holding a NUL byte, closed PIL images) raises ``ValueError`` naming the offending
index (and the path of a file). Empty images, NUL bytes and closed images are caught by
:func:`as_sources`, before any file is opened or any cache key computed.

Largest image: files are opened by PIL, which refuses an image of more than twice
``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 179 million by default) as a possible decompression
bomb; this is reported like any unreadable file. Raise ``PIL.Image.MAX_IMAGE_PIXELS`` only for
files you trust.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "EXIF_ORIENTATION",
    "Decoded",
    "Subset",
    "as_sources",
    "check_source",
    "decompression_bomb_error",
    "exif_orientation",
    "image_digest",
    "image_sizes",
    "load_resized",
    "load_rgb",
    "open_image",
    "position",
    "resize_rgb",
    "swaps_axes",
    "take",
]

#: PIL resampling used to bring every image to the model's square input.
RESAMPLE = Image.BICUBIC

#: The EXIF tag of the orientation applied when pixels are loaded.
EXIF_ORIENTATION = 0x0112


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of a PIL image; 1 (none) when absent or unreadable."""
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def swaps_axes(img: Image.Image) -> bool:
    """Whether the EXIF orientation of a PIL image swaps its width and height once applied
    (orientations 5 to 8: transpose, rotations by 90 degrees)."""
    return exif_orientation(img) in (5, 6, 7, 8)


@contextmanager
def open_image(path, where: str):
    """``PIL.Image.open(path)`` whose failures (also inside the block) are ``ValueError`` s naming
    ``where`` and the file."""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise ValueError(f"{where}: image file {str(path)!r} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise decompression_bomb_error(path, exc, where) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(
            f"{where}: cannot read image file {str(path)!r} ({type(exc).__name__}: {exc})"
        ) from None


def image_digest(source, new_hash=None) -> bytes:
    """16 bytes identifying an image source without reading a file.

    An array by its dtype, shape and pixels; a PIL image by its mode, size, EXIF orientation
    (when not 1) and pixels; a path by its absolute form (see :func:`sk_a2.cache.image_key` for
    the identity of a file's content). ``new_hash`` makes the hash object (``update`` and
    ``digest`` methods, 16-byte digest); by default BLAKE2b.
    """
    h = hashlib.blake2b(digest_size=16) if new_hash is None else new_hash()
    if isinstance(source, np.ndarray):
        h.update(b"array" + repr((source.shape, source.dtype.str)).encode())
        h.update(np.ascontiguousarray(source).tobytes())
    elif isinstance(source, Image.Image):
        h.update(b"pil" + repr((source.mode, source.size)).encode())
        orientation = exif_orientation(source)
        if orientation != 1:
            h.update(b"orientation %d" % orientation)
        h.update(source.tobytes())
    else:
        h.update(b"path" + os.path.abspath(os.fspath(source)).encode("utf-8", "surrogatepass"))
    return h.digest()


def as_sources(X, *, name="X"):
    """Validate ``X`` and return it as an indexable sequence of image sources.

    A 4-D (or 3-D grayscale) ``uint8`` array is returned as is (no copy); other sequences become a
    list (the elements are not copied). The type of each element, and what is known without
    reading pixels (a path holding a NUL byte, a closed or empty PIL image), are checked here
    (:func:`check_source`); the pixels lazily by :func:`load_rgb`.
    """
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise ValueError(
            f"{name} must be a sequence of images, got a single {type(X).__name__}; wrap it in a "
            "list"
        )
    if isinstance(X, np.ndarray) and X.dtype != object:
        return _checked_stack(X, name)
    if hasattr(X, "iloc"):
        X = X.to_list()
    try:
        seq = list(X)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of images (paths, PIL images or uint8 arrays), got "
            f"{type(X).__name__}"
        ) from None
    if not seq:
        raise ValueError(f"{name} is empty: at least one image is needed")
    for i, item in enumerate(seq):
        if not isinstance(item, (str, os.PathLike, Image.Image, np.ndarray, Decoded)):
            raise ValueError(
                f"{name}[{i}] is a {type(item).__name__}: expected a file path, a PIL image or a "
                "uint8 array"
            )
        check_source(item, f"{name}[{i}]")
    return seq


def _checked_stack(X: np.ndarray, name: str) -> np.ndarray:
    """A non-object array ``X`` of images, checked: (n, H, W, C) or (n, H, W) grayscale."""
    if X.ndim not in (3, 4):
        raise ValueError(
            f"{name} is an array of shape {X.shape}: expected (n, H, W, 3) uint8 images, or a "
            "sequence of paths / PIL images / (H, W, 3) arrays"
        )
    if X.ndim == 3 and X.shape[-1] in (3, 4):
        raise ValueError(
            f"{name} has shape {X.shape}: this looks like one (H, W, C) image, not a stack of "
            f"{X.shape[0]} grayscale images; pass a list ([img]) or add a leading axis "
            "(img[None]). A stack of grayscale images 3 or 4 pixels wide must be given as a "
            "list of (H, W) arrays or as an (n, H, W, 1) array"
        )
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one image is needed")
    _check_array_dtype(X, f"{name}")
    if X.ndim == 4 and X.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name} has shape {X.shape}: expected (n, H, W, 3) channels-last images"
        )
    if X.shape[1] < 1 or X.shape[2] < 1:
        raise ValueError(f"{name} has shape {X.shape}: the images are empty")
    return X


def _pil_closed(img: Image.Image) -> bool:
    """Whether ``img`` can no longer give its pixels: ``close()`` released them, or its file was
    closed (e.g. by leaving a ``with Image.open(...)`` block) before they were read. Reads
    nothing."""
    try:
        core = img.im  # Pillow >= 11 raises ValueError once the image is closed
    except ValueError:
        return True
    except AssertionError:  # Pillow >= 11: pixels not read yet
        core = None
    except Exception:
        return False
    if core is None:  # pixels not read yet: they still can be while the file is open
        return isinstance(img, ImageFile.ImageFile) and getattr(img, "fp", None) is None
    try:
        _ = core.mode  # earlier Pillow keeps a placeholder that raises on any use
    except ValueError:
        return True
    return False


def check_source(source, where: str) -> None:
    """Refuse what is wrong with one image source without reading pixels or files.

    A path holding a NUL byte (no file system accepts one), a closed PIL image and a PIL image
    with no pixels are ``ValueError`` s naming ``where`` (e.g. ``"X[3]"``) and the fix.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if ("\x00" if isinstance(path, str) else b"\x00") in path:
            raise ValueError(
                f"{where}: the path {path!r} holds a NUL byte ('\\x00'), which no file name can "
                "contain; remove it from the path"
            )
    elif isinstance(source, Image.Image):
        if _pil_closed(source):
            raise ValueError(
                f"{where}: the PIL image is closed (close() released its pixels, or its file was "
                "closed, e.g. by leaving a `with Image.open(...)` block, before they were read); "
                "pass the path instead, or call img.load() (or img.copy()) before closing it"
            )
        if source.width < 1 or source.height < 1:
            raise ValueError(
                f"{where}: the PIL image has size {source.width}x{source.height}: the image is "
                "empty (width and height must be at least 1)"
            )


def _check_array_dtype(arr, where):
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return
    if arr.dtype.kind == "f":
        hint = "; convert float images in [0, 1] with (img * 255).round().astype(np.uint8)"
    elif arr.dtype.kind == "b":
        hint = "; convert a mask with img.astype(np.uint8) * 255"
    elif arr.dtype.kind in "iu":
        hint = (
            "; convert it to uint8 yourself, e.g. img.astype(np.uint8) when every value lies in "
            "0-255 (A² does not guess the range of wider integers)"
        )
    else:
        hint = ""
    raise ValueError(f"{where} has dtype {arr.dtype}: expected uint8 (or uint16) pixels{hint}")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return np.round(arr / 257.0).astype(np.uint8)


def _array_rgb(arr: np.ndarray, where: str) -> np.ndarray:
    _check_array_dtype(arr, where)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(_to_uint8(arr)[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = _to_uint8(arr[..., :3])
    else:
        raise ValueError(f"{where} has shape {arr.shape}: expected (H, W, 3), (H, W, 4) or (H, W)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{where} has shape {arr.shape}: the image is empty")
    return arr


def _pil_rgb(img: Image.Image, where: str) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:
        pass
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _array_rgb(np.asarray(img).astype(np.uint16 if mode != "I" else np.int64)
                          .clip(0, 65535).astype(np.uint16), where)
    if mode == "F":
        raise ValueError(f"{where} is a 32-bit float image (mode 'F'): convert it to 8-bit first")
    if mode == "P":
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_rgb(source, index=None) -> np.ndarray:
    """Read one image source as an ``(H, W, 3)`` ``uint8`` array.

    Parameters
    ----------
    source : str, path-like, PIL.Image.Image or numpy.ndarray
    index : int, optional
        Position in ``X``, used in error messages.
    """
    where = "image" if index is None else f"X[{index}]"
    check_source(source, where)
    if isinstance(source, np.ndarray):
        return _array_rgb(source, where)
    if isinstance(source, Image.Image):
        return _pil_rgb(source, where)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with open_image(path, where) as img:
            img.load()
            return _pil_rgb(img, f"{where} ({str(path)!r})")
    if isinstance(source, Decoded):
        raise ValueError(f"{where} holds only pixels resized to {source.pixels.shape[0]} px, not "
                         "the original image")
    raise ValueError(f"{where} is a {type(source).__name__}: expected a path, PIL image or array")


def decompression_bomb_error(path, exc, where=None) -> ValueError:
    """The error for a file PIL refuses as a possible decompression bomb (``exc``), prefixed by
    ``where`` (e.g. ``"X[3]"``)."""
    prefix = "" if where is None else f"{where}: "
    return ValueError(
        f"{prefix}image file {str(path)!r} is refused as a possible decompression bomb "
        f"({exc}). If you trust the file, raise the limit before loading it: "
        "PIL.Image.MAX_IMAGE_PIXELS = <pixels> (None removes it)"
    )


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image to ``(size, size, 3)`` with PIL bicubic.

    An image already at that size is returned unchanged.
    """
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), RESAMPLE), dtype=np.uint8)


def load_resized(source, size: int, index=None):
    """Load one source and resize it to the model's square input.

    Returns
    -------
    pixels : ndarray of shape (size, size, 3), uint8
    hw : tuple of int
        The original height and width.
    """
    if isinstance(source, Decoded):
        return source.resized(size, index)
    rgb = load_rgb(source, index)
    return resize_rgb(rgb, size), rgb.shape[:2]


@dataclass(frozen=True, eq=False)
class Decoded:
    """An image already read, decoded and resized to a model's square input, ahead of the model.

    The Ray engine's reading tasks make these, so that the model actors receive pixels instead of
    decoding. The ``key`` is the source's own cache key (:func:`sk_a2.cache.image_key` of the file
    or array it came from), so cache entries are shared with runs over the sources themselves.

    Attributes
    ----------
    pixels : ndarray of shape (size, size, 3), uint8
        The resized pixels, as :func:`load_resized` returns them.
    hw : tuple of int
        The original height and width.
    key : str
        The cache key of the source's content.
    """

    pixels: np.ndarray
    hw: tuple
    key: str

    def resized(self, size: int, index=None):
        """The pixels and original size, as :func:`load_resized` returns them at ``size``."""
        if self.pixels.shape[:2] != (size, size):
            where = "image" if index is None else f"X[{index}]"
            raise ValueError(f"{where} was decoded at {self.pixels.shape[0]} px, not at the "
                             f"{size} px asked for")
        return self.pixels, tuple(self.hw)


@dataclass(frozen=True, eq=False)
class Subset(Sequence):
    """Some image sources of ``X`` and their positions in ``X``, so errors name the right image.

    Attributes
    ----------
    items : list or ndarray
        The selected sources.
    positions : ndarray of int64
        Position in ``X`` of each selected source.
    """

    items: object
    positions: np.ndarray

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def position(sources, i) -> int:
    """Position in the user's ``X`` of ``sources[i]`` (``i`` unless ``sources`` is a
    :class:`Subset`)."""
    return int(sources.positions[i]) if isinstance(sources, Subset) else int(i)


def take(sources, idx) -> Subset:
    """The sources at positions ``idx`` (an array stays an array, a list a list), as a
    :class:`Subset` remembering where each came from in ``X``."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(sources, Subset):
        items, positions = sources.items, sources.positions[idx]
    else:
        items, positions = sources, idx
    picked = items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]
    return Subset(picked, positions)


def _pil_size(img: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of a PIL image after its EXIF orientation, as ``load_rgb`` sees it."""
    w, h = img.size
    if swaps_axes(img):
        h, w = w, h
    return int(h), int(w)


def _source_size(source, index: int) -> tuple[int, int]:
    where = f"X[{index}]"
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.shape[0] < 1 or source.shape[1] < 1:
            raise ValueError(f"{where} has shape {source.shape}: expected (H, W, 3) or (H, W)")
        return int(source.shape[0]), int(source.shape[1])
    if isinstance(source, Image.Image):
        return _pil_size(source)
    with open_image(Path(os.fspath(source)), where) as img:
        return _pil_size(img)


def image_sizes(X) -> np.ndarray:
    """Original ``(height, width)`` of every image, without decoding pixels.

    Files are opened with PIL, which reads only their header; their EXIF orientation is taken
    into account, as when the pixels are loaded. Arrays give their shape.

    Parameters
    ----------
    X : sequence of image sources, or (n, H, W, 3) uint8 array

    Returns
    -------
    ndarray of shape (n, 2), int64
    """
    sources = as_sources(X)
    if isinstance(sources, np.ndarray):
        return np.tile(np.asarray(sources.shape[1:3], dtype=np.int64), (len(sources), 1))
    return np.asarray([_source_size(s, i) for i, s in enumerate(sources)],
                      dtype=np.int64).reshape(-1, 2)
