"""
When attention looks at the wrong region: the attention adapter
================================================================

:class:`~sk_a2.AttentionAdapter` learns a small correction of the attention map from the
training labels (the paper's Appendix G), for datasets where the attention model's saliency is
not where the label is (on CelebA, the hair colour: faces draw the attention). This runs the
script ``examples/adapter_celeba.py`` at a small size: synthetic faces in CelebA's on-disk
layout (hair colour is the label, the spurious attribute is the sex), read by
:func:`~sk_a2.datasets.load_celeba`; A² with the default attention against A² with the adapter,
both with a logistic-regression head on ``imgfocus_vits14`` embeddings, and the attention maps
``A`` and ``Ã`` of four rare-group test images with their crops.

Run time: about 1 to 2 minutes on two CPU cores (it embeds the 58 candidate crops of every
training image once).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from sk_a2 import AttentionAdapter, AttentionCropper
from sk_a2.datasets import load_celeba
from sk_a2.metrics import group_accuracy_report
from sk_a2.plot import plot_crops

# sphinx-gallery runs each example in its folder, without ``__file__``
sys.path.insert(0, str(Path(globals().get("__file__", "adapter_celeba.py")).resolve().parent))
import adapter_celeba  # noqa: E402

args = adapter_celeba.parse_args(["--n-synthetic", "32", "--epochs", "2", "--device", "cpu"])
folder = tempfile.TemporaryDirectory()
data = load_celeba(adapter_celeba.make_celeba_layout(folder.name, n_train=32, n_test=16))
train, test = np.flatnonzero(data.split == "train"), np.flatnonzero(data.split == "test")
X = data.images.tolist()
Xtr, Xte = [X[i] for i in train], [X[i] for i in test]
groups = np.asarray(data.group_names)[data.groups[test]]

common = dict(image_size=112, device="cpu", cache="memory")
a2 = adapter_celeba.build(args, AttentionCropper("imgfocus_vits14", crop_sizes=(32,), **common))
adapted = adapter_celeba.build(args, AttentionAdapter(
    "imgfocus_vits14", "imgfocus_vits14", n_crops=1, outer_epochs=args.epochs,
    outer_batch_size=8, random_state=0, **common))
for name, pipe in (("A², default attention", a2), ("A² + adapter", adapted)):
    pred = pipe.fit(Xtr, data.target[train]).predict(Xte)
    print(f"{name}\n{group_accuracy_report(data.target[test], pred, groups=groups)}\n")

# %%
# ``A`` (the model's attention) with A²'s crop, and ``Ã`` (adapted) with the adapter's crop,
# for test images of the rarest group.
from matplotlib.figure import Figure  # noqa: E402

rare = [X[i] for i in test[data.groups[test] == 3][:4]]
cropper, adapter = a2.named_steps["crop"], adapted.named_steps["crop"]
maps, adapted_maps = adapter.attention_maps(rare), adapter.adapted_maps(rare)
a2_crops, adapter_crops = cropper.transform(rare), adapter.transform(rare)
overlay_figure = Figure(figsize=(2.2 * len(rare), 4.6))
axes = overlay_figure.subplots(2, len(rare), squeeze=False)
for i, source in enumerate(rare):
    plot_crops(source, a2_crops.boxes[i], attention=maps[i], ax=axes[0, i])
    plot_crops(source, adapter_crops.boxes[i], attention=adapted_maps[i], ax=axes[1, i])
    axes[0, i].set_title("A, A² crop", fontsize=9)
    axes[1, i].set_title("Ã, adapter crop", fontsize=9)
folder.cleanup()
