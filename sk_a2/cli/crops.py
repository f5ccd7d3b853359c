"""``sk-a2 crops``: the crops A² chooses in your own images."""

from __future__ import annotations

import glob
from pathlib import Path

from . import common
from .common import CLIError, info

DESCRIPTION = (
    "Choose A²'s attention-guided crops in each image, print the boxes (in original-image "
    "pixels, with the attention mass inside each) as tab-separated lines, and write one overlay "
    "PNG per image (<out>/<image stem>_crops.png: crops bright, the rest faded, attention heat "
    "map). An IMAGE may be a file, a folder (its images, sorted by name) or a glob pattern "
    "(quote it: 'photos/*.jpg')."
)
_GLOB_CHARS = set("*?[")


def add_parser(subparsers):
    parser = subparsers.add_parser("crops", description=DESCRIPTION,
                                   help="show the crops A² chooses in your own images")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (JPEG, PNG, ...), folders of images or glob patterns")
    common.add_model_options(parser, "", "dinov2_vits14", "whose CLS attention picks the crops")
    common.add_crop_options(parser, (64,))
    common.add_image_size_option(parser, 224, "the model's square input")
    parser.add_argument("--no-heatmap", action="store_true",
                        help="do not lay the attention map over the images")
    common.add_runtime_options(parser)
    parser.add_argument("--out", default="sk_a2_crops", metavar="DIR",
                        help="folder for the overlay PNGs, created if needed "
                             "(default: sk_a2_crops)")
    return parser


def _image_extensions():
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _images_in(paths):
    extensions = _image_extensions()
    return sorted(str(p) for p in paths if p.is_file() and p.suffix.lower() in extensions)


def expand_images(items):
    """Files as given, folders as their images sorted by name, glob patterns as their sorted
    image matches; duplicates dropped, order kept."""
    found = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            files = _images_in(path.iterdir())
            if not files:
                raise CLIError(f"folder {item!r} holds no image files")
        elif path.is_file():
            files = [str(path) if item.startswith("~") else item]
        elif _GLOB_CHARS & set(item):
            files = _images_in(Path(p) for p in glob.glob(str(path), recursive=True))
            if not files:
                raise CLIError(f"no image file matches {item!r}")
        else:
            raise CLIError(f"image file {item!r} does not exist")
        found.extend(files)
    return list(dict.fromkeys(found))


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


def check(args):
    """Every check that needs no model; returns the image paths."""
    common.check_extras("crops", ["plot", common.model_extra(args.model)])
    common.check_device(args.device)
    common.check_image_size(args.image_size, {"--model": args.model})
    common.check_crop_sizes(args.crop_sizes, args.image_size)
    common.check_out_dir(args.out)
    images = expand_images(args.images)
    check_readable(images)
    return images


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

    images = check(args)
    with common.model_errors("--model", "--weights"):
        cropper = AttentionCropper(args.model, weights=args.weights, crop_sizes=args.crop_sizes,
                                   n_crops=args.n_crops, image_size=args.image_size,
                                   verbose=len(images) > args.batch_size,
                                   **common.runtime_kwargs(args)).fit()
        crops = cropper.transform(images)
        maps = None if args.no_heatmap else cropper.attention_maps(images)
    paths = save_overlays(cropper, images, args.out, cropset=crops, attention_maps=maps,
                          heatmap=not args.no_heatmap)
    print_boxes(images, crops)
    info(f"wrote {len(paths)} overlay PNG(s) to {args.out}")
    return paths
