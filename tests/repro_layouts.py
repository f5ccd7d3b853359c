"""Tiny benchmark folders in the Waterbirds and Spawrious layouts, and forward counters.

Images are small synthetic pictures: a coloured square (the class) on a coloured background (the
spurious attribute), so a tiny random ViT has something to separate.
"""

import csv
from contextlib import contextmanager

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

CLASS_COLOURS = ((230, 50, 40), (240, 220, 60), (40, 200, 220), (200, 60, 220))
PLACE_COLOURS = ((60, 140, 60), (40, 80, 200), (160, 120, 60), (120, 120, 120),
                 (230, 230, 230), (220, 200, 150))


def picture(label, place, rng, size=40):
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = PLACE_COLOURS[place]
    img = np.clip(img + rng.randint(-20, 20, size=img.shape), 0, 255).astype(np.uint8)
    s = rng.randint(size // 4, size // 3)
    x0, y0 = rng.randint(0, size - s, size=2)
    img[y0:y0 + s, x0:x0 + s] = CLASS_COLOURS[label]
    return Image.fromarray(img)


def write_waterbirds(root, n_per_split=(16, 8, 8), seed=0):
    """``metadata.csv`` + images; train 75 % spurious, val and test balanced over 4 groups."""
    rng = np.random.RandomState(seed)
    rows, cells = [], [(0, 0), (0, 1), (1, 0), (1, 1)]
    biased = [(0, 0), (1, 1), (0, 0), (1, 1)] + cells
    index = 0
    for split, n in enumerate(n_per_split):
        for i in range(n):
            label, place = (biased[i % 8] if split == 0 else cells[i % 4])
            name = f"{label:03d}.Bird/bird_{index:03d}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            picture(label, place, rng).save(root / name)
            rows.append({"img_id": index + 1, "img_filename": name, "y": label, "split": split,
                         "place": place, "place_filename": f"/p/{index}.jpg"})
            index += 1
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


BREEDS = ("bulldog", "corgi", "dachshund", "labrador")
LOCATIONS = ("desert", "jungle", "dirt", "mountain", "snow", "beach")


def write_spawrious(root, per_folder=2, seed=0):
    """``spawrious224/<0|1>/<location>/<breed>/*.png`` for every location and breed."""
    rng = np.random.RandomState(seed)
    for folder in ("0", "1"):
        for p, location in enumerate(LOCATIONS):
            for b, breed in enumerate(BREEDS):
                path = root / "spawrious224" / folder / location / breed
                path.mkdir(parents=True, exist_ok=True)
                for i in range(per_folder):
                    picture(b, p, rng).save(path / f"{i}.png")
    return root


def tiny_vit_weights(path, seed):
    """Random timm ``test_vit`` weights saved as safetensors."""
    torch.manual_seed(seed)
    save_file(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict(),
              str(path))
    return str(path)


@contextmanager
def count_forwards(weights_files, image_size):
    """Images (or crops) fed through each model, counted at its patch embedding.

    Yields ``{weights_file: [n_inputs, ...]}`` — one entry per forward batch.
    """
    from sk_a2.models import load_model

    counts, handles = {}, []
    for w in weights_files:
        vm = load_model("timm:test_vit", weights=w, image_size=image_size, device="cpu")
        counts[w] = []
        handles.append(vm.module.patch_embed.register_forward_hook(
            lambda mod, args, out, _w=w: counts[_w].append(int(args[0].shape[0]))))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
