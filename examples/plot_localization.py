"""
Does attention land on the object? Localization per block
=========================================================

:func:`sk_a2.localization.localization_report` measures, for each image and block, how much of
the CLS attention falls inside the object's box (``mass_in_box``), whether the attention's
maximum is inside it (``hit``), the attention's normalised entropy and the shares of the CLS,
register and patch tokens. Here: 24 images of the synthetic benchmark, whose object boxes come
with the data (``data.boxes``), every block of the offline DINOv2 ViT-S/14
(``imgfocus_vits14``, one forward pass per batch for all blocks), and two head aggregations.
:func:`~sk_a2.localization_plot.plot_per_layer` and
:func:`~sk_a2.localization_plot.plot_token_shares` draw the summaries. ``sk-a2 localize`` does
the same from the command line, for several models and real datasets
(:doc:`/localization`).

Run time: a few seconds to 10 s on two CPU cores.
"""

import pandas as pd

from sk_a2 import AttentionCropper
from sk_a2.datasets import make_spurious_images
from sk_a2.localization import localization_report, summarize_report
from sk_a2.localization_plot import plot_per_layer, plot_token_shares

data = make_spurious_images(n_samples=24, image_size=112, random_state=0)
reports = []
for aggregation in ("mean", "max"):
    cropper = AttentionCropper("imgfocus_vits14", image_size=112, head_aggregation=aggregation,
                               device="cpu").fit(data.images)
    reports.append(localization_report(cropper, data.images, data.boxes, layers="all"))
summary = summarize_report(reports)
columns = ["head_aggregation", "layer", "mass_in_box_mean", "hit_mean", "entropy_mean"]
print(pd.DataFrame(summary)[columns].round(3).to_string(index=False))

# %%
# Attention mass inside the box and hit rate, per block.
per_layer_figure = plot_per_layer(summary)

# %%
# Where the CLS query's attention goes: CLS itself, registers (none in this model), patches.
token_share_figure = plot_token_shares(summary)
