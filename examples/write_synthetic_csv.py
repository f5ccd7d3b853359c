"""Write the embedded synthetic benchmark as PNG files listed in a CSV file.

The result is a dataset in the "your own data" format (``sk_a2.datasets.load_csv``,
``sk-a2 evaluate --dataset csv:FILE``): one row per image with its file, label (``shape``),
spurious attribute (``background``) and split. Usage::

    python examples/write_synthetic_csv.py synthetic
    sk-a2 evaluate --dataset csv:synthetic/images.csv --image-column image \
        --target-column shape --group-column background --split-column split ...
"""

import csv
import sys
from pathlib import Path

from PIL import Image

from sk_a2.datasets import make_spurious_images


def write_synthetic_csv(folder, n_samples=400, image_size=112, random_state=0):
    """Write ``n_samples`` images of the demo's benchmark under ``folder``; return the CSV path."""
    data = make_spurious_images(n_samples, image_size=image_size, random_state=random_state)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "images.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "shape", "background", "split"])
        for i, image in enumerate(data.images):
            name = f"images/{i:04d}.png"
            Image.fromarray(image).save(folder / name)
            writer.writerow([name, data.target_names[data.target[i]],
                             data.spurious_names[data.spurious[i]], data.split[i]])
    return path


if __name__ == "__main__":
    print(write_synthetic_csv(sys.argv[1] if len(sys.argv) > 1 else "synthetic"))
