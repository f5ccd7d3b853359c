"""Build MetaShift Animals' ``metadata.csv`` from the MetaShift release (A² paper, Appendix C).

MetaShift Animals is the A² paper's eight-class benchmark (bear, bird, cow, elephant, giraffe,
horse, sheep, zebra) on Visual Genome images, with disjoint train and test *contexts*: each
image of MetaShift belongs to subsets named ``<class>(<context>)`` (``elephant(rope)``,
``elephant(water)``), and the context is the spurious feature. This script follows the recipe
of Appendix C:

1. for each class, its contexts are the MetaShift subsets ``<class>(<context>)`` holding at
   least ``--min-images`` images that are on disk;
2. the contexts of each class are shuffled (seeded by ``--seed``) and split in two halves, the
   first (rounded up) for train, the rest for test;
3. every image of a test context is removed from train (no image is in both splits).

It writes one row per (image, context) -- an image in two contexts of its class is listed
twice -- as ``<out>/metadata.csv`` with the columns ``img_filename`` (the image's absolute
path), ``label``, ``context``, ``split`` and ``image_id``, the layout
:func:`sk_a2.datasets.load_metashift_animals` reads. Then::

    sk-a2 evaluate --dataset metashift_animals --root <out> --val-size 0.2 ...

The paper's exact context lists are not published, so the counts will differ from its Table 4.

Inputs, from the MetaShift repository (https://github.com/Weixin-Liang/MetaShift):

* ``dataset/meta_data/full-candidate-subsets.pkl``: a pickled dict from subset name
  (``"cat(sofa)"``) to the IDs of its images. Unpickling runs code stored in the file: read only
  the file of the official repository.
* the Visual Genome images as GQA distributes them (https://nlp.stanford.edu/data/gqa/images.zip,
  about 20 GB, unzipped as ``allImages/images/<ID>.jpg``); pass that ``images`` folder.

Usage::

    python examples/make_metashift_animals_csv.py \\
        --subsets MetaShift/dataset/meta_data/full-candidate-subsets.pkl \\
        --images /data/GQA/allImages/images --out /data/metashift_animals
"""

from __future__ import annotations

import argparse
import csv
import pickle
import random
import re
import sys
from pathlib import Path

CLASSES = ("bear", "bird", "cow", "elephant", "giraffe", "horse", "sheep", "zebra")
_SUBSET = re.compile(r"^\s*([^()]+?)\s*\((.+)\)\s*$")


def read_subsets(path):
    """``{class: {context: sorted image IDs}}`` of the eight classes, from the pickle file."""
    with open(path, "rb") as handle:
        subsets = pickle.load(handle)
    if not isinstance(subsets, dict):
        raise ValueError(f"{str(path)!r} does not hold a dict of subsets (got "
                         f"{type(subsets).__name__}); pass full-candidate-subsets.pkl")
    out = {name: {} for name in CLASSES}
    for key, ids in subsets.items():
        match = _SUBSET.match(str(key))
        if match and match.group(1) in out and match.group(2) != match.group(1):
            out[match.group(1)][match.group(2)] = sorted(str(i) for i in ids)
    return out


def split_contexts(subsets, images, min_images, seed):
    """``{class: (train contexts, test contexts)}``, each context keeping its images on disk."""
    rng = random.Random(seed)
    plan = {}
    for name in CLASSES:
        kept = {context: [i for i in ids if (images / f"{i}.jpg").is_file()]
                for context, ids in sorted(subsets[name].items())}
        kept = {c: ids for c, ids in kept.items() if len(ids) >= min_images}
        if len(kept) < 2:
            raise ValueError(f"class {name!r} has {len(kept)} context(s) with at least "
                             f"{min_images} images in {str(images)!r}; it needs two (one for "
                             "train, one for test): check --images or lower --min-images")
        contexts = sorted(kept)
        rng.shuffle(contexts)
        half = (len(contexts) + 1) // 2
        plan[name] = ({c: kept[c] for c in contexts[:half]}, {c: kept[c] for c in contexts[half:]})
    return plan


def metadata_rows(plan, images):
    """The CSV rows: test contexts whole, train contexts without any image of test."""
    test_ids = {i for _, test in plan.values() for ids in test.values() for i in ids}
    rows = []
    for name, (train, test) in plan.items():
        for split, contexts in (("train", train), ("test", test)):
            for context, ids in sorted(contexts.items()):
                for i in ids:
                    if split == "train" and i in test_ids:
                        continue
                    rows.append([str((images / f"{i}.jpg").resolve()), name, context, split, i])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subsets", required=True, type=Path,
                        help="MetaShift's dataset/meta_data/full-candidate-subsets.pkl")
    parser.add_argument("--images", required=True, type=Path,
                        help="folder of the Visual Genome images <ID>.jpg (GQA's images.zip)")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder to write metadata.csv to, created if needed")
    parser.add_argument("--min-images", type=int, default=25,
                        help="smallest context kept, in images on disk (default: 25)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the train/test split of the contexts (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing <out>/metadata.csv")
    args = parser.parse_args(argv)
    if not args.subsets.is_file():
        parser.error(f"--subsets {str(args.subsets)!r} does not exist")
    if not args.images.is_dir():
        parser.error(f"--images {str(args.images)!r} is not a folder")
    target = args.out / "metadata.csv"
    if target.exists() and not args.overwrite:
        parser.error(f"{str(target)!r} exists: pass --overwrite to replace it")
    try:
        plan = split_contexts(read_subsets(args.subsets), args.images, args.min_images, args.seed)
    except (ValueError, pickle.UnpicklingError, EOFError) as exc:
        parser.error(str(exc))
    rows = metadata_rows(plan, args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_filename", "label", "context", "split", "image_id"])
        writer.writerows(rows)
    for split in ("train", "test"):
        n = sum(r[3] == split for r in rows)
        contexts = {(r[1], r[2]) for r in rows if r[3] == split}
        print(f"{split}: {n} rows, {len(contexts)} class-context groups")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
