"""
Where A² looks: attention-guided crops
======================================

:class:`~sk_a2.AttentionCropper` computes the last-block CLS attention of a small
self-supervised ViT and places greedy, non-overlapping, maximum-attention square crops. Here it
runs on eight images of the embedded synthetic benchmark
(:func:`~sk_a2.datasets.make_spurious_images`: a disk or a square, the label, on a land or water
background, the spurious attribute) with the offline DINOv2 ViT-S/14 weights
(``imgfocus_vits14``), and :func:`~sk_a2.plot.plot_crop_grid` draws the attention and the crops
against the centre crops of the :class:`~sk_a2.CenterCropper` baseline.

Run time: a few seconds on two CPU cores.
"""

import numpy as np

from sk_a2 import AttentionCropper, CenterCropper
from sk_a2.datasets import make_spurious_images
from sk_a2.plot import plot_crop_grid

data = make_spurious_images(n_samples=40, image_size=112, random_state=0)
images = data.images[:8]
titles = [f"{data.target_names[t]} on {data.spurious_names[s]}"
          for t, s in zip(data.target[:8], data.spurious[:8])]

# %%
# Attention crops: two crops of 48 and 24 px in the 112 px frame.
cropper = AttentionCropper("imgfocus_vits14", crop_sizes=(48, 24), image_size=112,
                           device="cpu")
crops = cropper.fit_transform(images)
maps = cropper.attention_maps(images)
print(crops)
print("attention mass inside the crops:", np.round(crops.scores.sum(1), 2))
attention_figure = plot_crop_grid(images, crops, maps, ncols=4, titles=titles)

# %%
# The centre-crop baseline puts one box in the middle, wherever the object is.
center = CenterCropper(crop_sizes=(48,), image_size=112).fit_transform(images)
center_figure = plot_crop_grid(images, center, ncols=4, titles=titles)
