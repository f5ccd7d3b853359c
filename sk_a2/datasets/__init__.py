"""Datasets for spurious-correlation benchmarks.

``make_spurious_images`` generates a small synthetic benchmark in memory. The loaders read
the metadata of the benchmarks used in the A2 paper from a local copy and return image
paths with labels, spurious attributes, groups and splits; they neither download nor decode
images, and do not check that every image file exists, except where they return boxes: those
are clipped to their image, whose size is read from the file's header. ``load_imagenet_val`` and
``load_image_folder`` return annotated images for :mod:`sk_a2.localization`. ``load_csv`` reads
your own images from a CSV file (and checks that each exists). Every benchmark loader takes the
dataset folder or its parent as ``root`` (``DATASET_FOLDERS`` lists the folder names looked for).
Every function returns a :class:`sklearn.utils.Bunch` whose ``DESCR`` documents the expected
layout and the label/group encoding.
"""

from ._boxes import load_image_folder, load_imagenet_val
from ._celeba import load_celeba
from ._common import DATASET_FOLDERS, SPLIT_NAMES
from ._csv import load_csv
from ._metashift import load_metashift_animals, load_metashift_cvd
from ._registry import Benchmark, csv_benchmark, get_benchmark, list_benchmarks
from ._spawrious import load_spawrious, spawrious_plan
from ._synthetic import make_spurious_images
from ._two_object import make_two_object
from ._waterbirds import load_waterbirds

__all__ = [
    "DATASET_FOLDERS",
    "SPLIT_NAMES",
    "Benchmark",
    "csv_benchmark",
    "get_benchmark",
    "list_benchmarks",
    "load_celeba",
    "load_csv",
    "load_image_folder",
    "load_imagenet_val",
    "load_metashift_animals",
    "load_metashift_cvd",
    "load_spawrious",
    "load_waterbirds",
    "make_spurious_images",
    "make_two_object",
    "spawrious_plan",
]
