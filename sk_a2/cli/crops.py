"""``sk-a2 crops``: the crops A² chooses in your own images."""

from __future__ import annotations

import functools
import glob
import os
import re
from pathlib import Path

from . import common
from .common import CLIError, info

DESCRIPTION = (
    "Choose A²'s attention-guided crops in each image, print the boxes (in original-image "
    "pixels, with the attention mass inside each) as tab-separated lines, and write one overlay "
    "PNG per image (<out>/<image stem>_crops.png: crops bright, the rest faded, attention heat "
    "map). An IMAGE may be a file, a folder (its images, sorted by name; with --recursive also "
    "those of its subfolders) or a glob pattern (quote it: 'photos/*.jpg', 'photos/*/*.jpg')."
)
_GLOB_CHARS = set("*?[")


def add_parser(subparsers):
    parser = subparsers.add_parser("crops", description=DESCRIPTION,
                                   help="show the crops A² chooses in your own images")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (JPEG, PNG, ...), folders of images or glob patterns")
    parser.add_argument("--recursive", action="store_true",
                        help="take the images of each folder's subfolders too, at any depth "
                             "(e.g. a folder of class subfolders), sorted by path; folders "
                             "matched by a glob pattern too")
    common.add_model_options(parser, "", "dinov2_vits14", "whose CLS attention picks the crops")
    common.add_crop_options(parser, (64,))
    common.add_image_size_option(parser, 224, "the model's square input")
    parser.add_argument("--no-heatmap", action="store_true",
                        help="do not lay the attention map over the images")
    common.add_runtime_options(parser)
    parser.add_argument("--out", default="sk_a2_crops", metavar="DIR",
                        help="folder for the overlay PNGs, created if needed "
                             "(default: sk_a2_crops)")
    common.add_overwrite_option(parser, "overlay PNGs")
    return parser


@functools.lru_cache(maxsize=1)
def _image_extensions():
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _images_in(paths):
    extensions = _image_extensions()
    return sorted(str(p) for p in paths if p.is_file() and p.suffix.lower() in extensions)


def _walk(folder):
    """``(folder, its images)`` for ``folder`` and each subfolder, depth first, by name
    (symbolic links to folders are not followed)."""
    for here, subfolders, files in os.walk(folder):
        subfolders.sort()
        yield here, _images_in(Path(here) / f for f in files)


def _images_under(folder):
    """The images of ``folder`` and all its subfolders, sorted by path."""
    return sorted((f for _, files in _walk(folder) for f in files), key=lambda f: Path(f).parts)


def _no_images(item, path):
    """The error for a folder without image files of its own."""
    first = next((files[0] for _, files in _walk(path) if files), None)
    if first is None:
        return CLIError(f"folder {item!r} holds no image files, nor do its subfolders")
    depth = len(Path(first).relative_to(path).parts) - 1
    pattern = os.path.join(item, *["*"] * depth, f"*{Path(first).suffix}")
    return CLIError(f"folder {item!r} holds no image files, but its subfolders do (e.g. "
                    f"{first!r}): pass --recursive to take them all, or a quoted glob pattern "
                    f"such as {pattern!r}")


def _folder_images(item, path, recursive):
    files = _images_under(path) if recursive else _images_in(path.iterdir())
    if not files:
        raise _no_images(item, path)
    return files


def _glob_images(item, path, recursive):
    matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    folders = [p for p in matches if p.is_dir()]
    files = _images_in(matches)
    if recursive:
        files = sorted(files + [f for d in folders for f in _images_under(d)],
                       key=lambda f: Path(f).parts)
    if not files:
        hint = (f" (it matches {len(folders)} folder(s): pass --recursive to take their images)"
                if folders and not recursive else "")
        raise CLIError(f"no image file matches {item!r}{hint}")
    return files


def expand_images(items, recursive=False):
    """Files as given, folders as their images sorted by name, glob patterns as their sorted
    image matches; with ``recursive``, folders (given or matched) as the images of all their
    subfolders too, sorted by path. Duplicates dropped, order kept."""
    found = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            files = _folder_images(item, path, recursive)
        elif path.is_file():
            files = [str(path) if item.startswith("~") else item]
        elif _GLOB_CHARS & set(item):
            files = _glob_images(item, path, recursive)
        else:
            raise CLIError(f"image file {item!r} does not exist")
        found.extend(files)
    return list(dict.fromkeys(found))


def names_folder(items):
    """Whether an item of ``items`` is a folder or a glob pattern that matches one."""
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir() or (_GLOB_CHARS & set(item) and not path.exists()
                             and any(Path(p).is_dir() for p in glob.glob(str(path),
                                                                         recursive=True))):
            return True
    return False


def check_readable(images):
    """Each image's header must be one that PIL can read."""
    from PIL import Image

    from ..images import decompression_bomb_error

    for image in images:
        try:
            with Image.open(image):
                pass
        except Image.DecompressionBombError as exc:
            raise CLIError(str(decompression_bomb_error(image, exc))) from None
        except (OSError, SyntaxError, ValueError):
            raise CLIError(f"{image!r} is not an image file that can be read "
                           "(JPEG, PNG, ...)") from None


def overlay_names(images):
    """The file stem of each image's overlay: its name's stem (characters other than letters,
    digits, ``.``, ``_`` and ``-`` made ``_``), prefixed with its index when stems repeat."""
    names = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(os.fspath(p)).stem) or "image"
             for p in images]
    if len(set(names)) < len(names):
        width = len(str(len(names) - 1))
        names = [f"{i:0{width}d}_{name}" for i, name in enumerate(names)]
    return names


def check(args):
    """Every check that needs no model; returns the image paths, their overlay names and the
    output folder."""
    common.refuse_ignored(args, [("recursive", names_folder(args.images),
                                  "no IMAGE is a folder or a glob pattern matching folders")])
    common.check_extras("crops", ["plot", common.model_extra(args.model)])
    common.check_device(args.device)
    common.check_image_size(args.image_size, {"--model": args.model})
    common.check_crop_sizes(args.crop_sizes, args.image_size)
    images = expand_images(args.images, recursive=args.recursive)
    check_readable(images)
    names = overlay_names(images)
    out = common.check_output_dir(args.out)
    common.check_overwrite(out, [f"{n}_crops.png" for n in names], args.overwrite)
    return images, names, out


def print_boxes(images, crops):
    print("\t".join(["image", "crop", "x0", "y0", "x1", "y1", "attention"]))
    for image, boxes, scores in zip(images, crops.boxes, crops.scores):
        for j, (box, score) in enumerate(zip(boxes, scores), start=1):
            coords = [f"{v:.1f}" for v in box]
            print("\t".join([image, str(j), *coords, f"{score:.4f}"]))


def run(args):
    """The ``crops`` subcommand; returns the written PNG paths."""
    from ..cropper import AttentionCropper
    from ..plot import save_overlays

    images, names, out = check(args)
    with common.model_errors("--model", "--weights"):
        cropper = AttentionCropper(args.model, weights=args.weights, crop_sizes=args.crop_sizes,
                                   n_crops=args.n_crops, image_size=args.image_size,
                                   verbose=len(images) > args.batch_size,
                                   **common.runtime_kwargs(args)).fit()
        crops = cropper.transform(images)
        maps = None if args.no_heatmap else cropper.attention_maps(images)
    paths = save_overlays(cropper, images, out, cropset=crops, attention_maps=maps,
                          heatmap=not args.no_heatmap, names=names)
    print_boxes(images, crops)
    info(f"wrote {len(paths)} overlay PNG(s) to {out}")
    return paths
