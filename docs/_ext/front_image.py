"""Draw the start page's picture, ``docs/_static/a2_crops.png``, and write it.

Five images of the embedded synthetic benchmark (:func:`sk_a2.datasets.make_spurious_images`),
each with the CLS attention of the offline DINOv2 ViT-S/14 weights (``imgfocus_vits14``) as a heat
map and the two crops A² chooses from it (48 and 24 px in the 112 px frame). The PNG is committed;
run this again (``python docs/_ext/front_image.py``, a few seconds on a CPU) when the drawing
should change.
"""

from pathlib import Path

import numpy as np

from sk_a2 import AttentionCropper
from sk_a2.datasets import make_spurious_images
from sk_a2.plot import plot_crop_grid, save_figure

OUT = Path(__file__).resolve().parent.parent / "_static" / "a2_crops.png"


def main(out=OUT):
    data = make_spurious_images(n_samples=40, image_size=112, random_state=0)
    # one image of each group first, then one more
    idx = [int(np.flatnonzero(data.groups == g)[0]) for g in np.unique(data.groups)]
    idx.append(int(np.setdiff1d(np.arange(len(data.images)), idx)[0]))
    images = data.images[idx]
    cropper = AttentionCropper("imgfocus_vits14", crop_sizes=(48, 24), image_size=112,
                               device="cpu").fit()
    crops, maps = cropper.transform(images), cropper.attention_maps(images)
    titles = [f"{data.target_names[data.target[i]]} on {data.spurious_names[data.spurious[i]]}"
              for i in idx]
    figure = plot_crop_grid(images, crops, maps, ncols=len(idx), titles=titles, cell_size=2.2)
    return save_figure(figure, out, dpi=110)


if __name__ == "__main__":
    print(main())
