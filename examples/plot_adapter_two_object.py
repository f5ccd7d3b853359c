"""
Learning where the label is when attention looks elsewhere
==========================================================

:func:`~sk_a2.datasets.make_two_object` draws a large photograph (a pagoda or a dahlia) in the
upper part of each image and a small handwritten digit, the label, anywhere in the bottom strip.
DINOv2's attention goes to the photograph, so A²'s crop misses the digit; in training the
photograph agrees with the digit in 90 % of the images, in test it is independent. A² then
learns the photograph and fails on the images where the two disagree.

:class:`~sk_a2.AttentionAdapter` learns a correction of the attention map from the labels
(Appendix G of the paper). Here it gets the training groups (digit × photograph, routed
through scikit-learn's metadata routing, so both of its losses weigh every group equally) and a
small balanced validation set (``X_val``), which it scores after every epoch to keep the best
epoch. Attention runs at 112 px (an 8 × 8 grid); the 58 candidate crops are embedded at 42 px.

Run time: about a minute on two CPU cores (embedding the 58 candidates of 220 images once).
"""

import numpy as np
import sklearn
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionAdapter, AttentionCropper, CropEmbedder
from sk_a2.datasets import make_two_object
from sk_a2.metrics import group_accuracy_report
from sk_a2.plot import plot_crops

train = make_two_object(160, correlation=0.9, image_size=112, random_state=1)
val = make_two_object(60, correlation=0.5, image_size=112, random_state=3)
test = make_two_object(200, correlation=0.5, image_size=112, random_state=2)
names = np.asarray(test.group_names)
common = dict(image_size=112, device="cpu", cache="memory")


def pipeline(cropper):
    return Pipeline([
        ("crop", cropper),
        ("emb", CropEmbedder("imgfocus_vits14", image_size=42, device="cpu", cache="memory")),
        ("lr", LogisticRegression(max_iter=3000)),
    ])


# %%
# A² with the model's own attention: one 32 px crop per image.
a2 = pipeline(AttentionCropper("imgfocus_vits14", crop_sizes=(32,), n_crops=1, **common))
a2.fit(train.images, train.target)
print("A², default attention")
print(group_accuracy_report(test.target, a2.predict(test.images), groups=names[test.groups]))

# %%
# A² with the adapter, at its defaults. ``groups`` reaches the adapter's ``fit`` through
# metadata routing; ``X_val`` and friends are passed the same way.
adapter = AttentionAdapter("imgfocus_vits14", "imgfocus_vits14", n_crops=1, embedding_size=42,
                           random_state=0, **common)
with sklearn.config_context(enable_metadata_routing=True):
    adapter.set_fit_request(groups=True, X_val=True, y_val=True, groups_val=True)
    adapted = pipeline(adapter).fit(train.images, train.target, groups=train.groups,
                                    X_val=val.images, y_val=val.target, groups_val=val.groups)
print("A² + adapter")
print(group_accuracy_report(test.target, adapted.predict(test.images), groups=names[test.groups]))


def on_digit(crops, boxes):
    """Share of images whose crop covers at least half of the digit's box."""
    b = crops.boxes[:, 0]
    ix = np.minimum(b[:, 2], boxes[:, 2]) - np.maximum(b[:, 0], boxes[:, 0])
    iy = np.minimum(b[:, 3], boxes[:, 3]) - np.maximum(b[:, 1], boxes[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    return np.mean(inter >= 0.5 * np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))


cropper = a2.named_steps["crop"]
print(f"crop on the digit: A² {on_digit(cropper.transform(test.images), test.boxes):.0%}, "
      f"adapter {on_digit(adapter.transform(test.images), test.boxes):.0%}; "
      f"epoch kept: {adapter.best_epoch_} of {adapter.n_iter_}")

# %%
# What to watch: the validation score (worst-group accuracy of a head on the hard crops of the
# validation images; epoch 0 is the raw attention), not the training loss, which falls
# whether or not the crops improve.
curves = Figure(figsize=(6, 3))
ax = curves.subplots()
ax.plot(range(len(adapter.validation_scores_)), adapter.validation_scores_, "o-",
        label="validation score (worst group)")
ax.plot(range(1, len(adapter.loss_curve_) + 1), adapter.loss_curve_, "s--",
        label="held-out loss (training images)")
ax.axvline(adapter.best_epoch_, color="grey", lw=0.8)
ax.set_xlabel("epoch")
ax.legend(fontsize=8)
curves.tight_layout()

# %%
# ``A`` with A²'s crop (top) and ``Ã`` with the adapter's crop (bottom), for test images whose
# photograph disagrees with the digit.
rare = test.images[test.target != test.spurious][:4]
maps, adapted_maps = adapter.attention_maps(rare), adapter.adapted_maps(rare)
a2_crops, adapter_crops = cropper.transform(rare), adapter.transform(rare)
overlays = Figure(figsize=(2.2 * len(rare), 4.6))
axes = overlays.subplots(2, len(rare), squeeze=False)
for i, image in enumerate(rare):
    plot_crops(image, a2_crops.boxes[i], attention=maps[i], ax=axes[0, i])
    plot_crops(image, adapter_crops.boxes[i], attention=adapted_maps[i], ax=axes[1, i])
    axes[0, i].set_title("A, A² crop", fontsize=9)
    axes[1, i].set_title("Ã, adapter crop", fontsize=9)
