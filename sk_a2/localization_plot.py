"""Figures of localization summaries (the paper's Figs. 2/11, 9/12–14 and 10); needs matplotlib.

Each function takes a :func:`sk_a2.localization.summarize_report` result and returns a
:class:`matplotlib.figure.Figure`; write it with :func:`sk_a2.plot.save_figure`.
"""

from __future__ import annotations

import numpy as np

from .localization import report_columns

__all__ = ["plot_mass_hit_vs_size", "plot_per_layer", "plot_token_shares"]


def _figure(ncols, width=4.2, height=3.4):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install "sk-a2[plot]"') from exc
    fig = Figure(figsize=(width * ncols, height))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _series(summary):
    """``{(model, head aggregation): row indices sorted by layer}`` in order of appearance."""
    cols = report_columns(summary)
    series = {}
    for i, key in enumerate(zip(cols["model"], cols["head_aggregation"])):
        series.setdefault(key, []).append(i)
    for key, rows in series.items():
        series[key] = sorted(rows, key=lambda i: cols["layer"][i])
    return cols, series


def _label(model, aggregation, several_aggregations):
    return f"{model} ({aggregation})" if several_aggregations else str(model)


def _two_panels(summary, draw, xlabel, suffix, *, xscale="linear"):
    """Mass in box (left) and hit rate (right), ``draw(ax, cols, series, metric, several)``."""
    cols, series = _series(summary)
    several = len({agg for _, agg in series}) > 1
    fig, axes = _figure(2)
    for ax, metric, title in zip(axes, ("mass_in_box", "hit"), ("mass in box", "hit rate")):
        draw(ax, cols, series, metric, several)
        ax.set_xscale(xscale)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{title} {suffix}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _draw_vs_size(ax, cols, series, metric, several):
    by_agg = {}
    for (model, agg), rows in series.items():
        last = rows[-1]
        by_agg.setdefault(agg, []).append((cols["n_params"][last], cols[f"{metric}_mean"][last],
                                           cols[f"{metric}_std"][last], model))
    for agg, points in by_agg.items():
        points.sort(key=lambda p: p[0])
        x, y, err = (np.asarray([p[k] for p in points], dtype=float) for k in range(3))
        ax.errorbar(x / 1e6, y, yerr=err if metric == "mass_in_box" else None, marker="o",
                    capsize=3, label=agg if several else None)
        for xi, yi, point in zip(x, y, points):
            ax.annotate(str(point[3]), (xi / 1e6, yi), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")


def _draw_per_layer(ax, cols, series, metric, several):
    for (model, agg), rows in series.items():
        layers = cols["layer"][rows].astype(int)
        y = cols[f"{metric}_mean"][rows].astype(float)
        line, = ax.plot(layers, y, marker=".", label=_label(model, agg, several))
        ax.plot(layers[-1:], y[-1:], marker="*", markersize=12, color=line.get_color())


def plot_mass_hit_vs_size(summary):
    """Mass in box (± std) and hit rate of each model's last reported block against its size.

    Parameters
    ----------
    summary : DataFrame or Bunch
        :func:`sk_a2.localization.summarize_report` of several models: ``n_params``,
        ``mass_in_box_*`` and ``hit_*`` of each model's last block are drawn.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels (mass in box, hit rate), parameters on a log axis.

    Examples
    --------
    Two models, their last block each:

    >>> import pandas as pd
    >>> from sk_a2.localization_plot import plot_mass_hit_vs_size
    >>> summary = pd.DataFrame({"model": ["vit_s", "vit_g"], "head_aggregation": "mean",
    ...                         "layer": 11, "n_params": [2.2e7, 1.1e9], "n_images": 8,
    ...                         "mass_in_box_mean": [0.4, 0.5], "mass_in_box_std": 0.1,
    ...                         "hit_mean": [0.8, 0.9], "hit_std": 0.0})
    >>> len(plot_mass_hit_vs_size(summary).axes)
    2
    """
    return _two_panels(summary, _draw_vs_size, "parameters (millions)", "vs. model size",
                       xscale="log")


def plot_per_layer(summary):
    """Mass in box and hit rate per block, one line per model (stars: the last block).

    Parameters
    ----------
    summary : DataFrame or Bunch
        :func:`sk_a2.localization.summarize_report` with several blocks per model
        (``layers="all"``).

    Returns
    -------
    matplotlib.figure.Figure
        Two panels (mass in box, hit rate) against the block index.

    Examples
    --------
    One model, three blocks (built from :func:`~sk_a2.localization.summarize_report`'s
    columns):

    >>> import numpy as np
    >>> from sklearn.utils import Bunch
    >>> from sk_a2.localization_plot import plot_per_layer
    >>> rising = np.array([0.2, 0.3, 0.5])
    >>> summary = Bunch(model=np.array(["vit_s"] * 3), head_aggregation=np.array(["max"] * 3),
    ...                 layer=np.arange(3), n_params=np.full(3, 2.2e7), n_images=np.full(3, 4),
    ...                 mass_in_box_mean=rising, mass_in_box_std=rising / 10,
    ...                 hit_mean=rising + 0.3, hit_std=np.zeros(3))
    >>> fig = plot_per_layer(summary)
    >>> [ax.get_xlabel() for ax in fig.axes]
    ['block', 'block']
    """
    return _two_panels(summary, _draw_per_layer, "block", "per block")


def plot_token_shares(summary):
    """Share of the CLS attention on the CLS, register and patch tokens per block, per model.

    Parameters
    ----------
    summary : DataFrame or Bunch
        :func:`sk_a2.localization.summarize_report` results, with the token shares.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per model.

    Examples
    --------
    >>> import pandas as pd
    >>> from sk_a2.localization_plot import plot_token_shares
    >>> shares = {"cls_share": [0.3, 0.1], "register_share": [0.0, 0.2],
    ...           "patch_share": [0.7, 0.7], "mass_in_box": [0.4, 0.5]}
    >>> summary = pd.DataFrame({"model": "vit_s_reg", "head_aggregation": "mean",
    ...                         "layer": [10, 11], "n_params": 2.2e7, "n_images": 4,
    ...                         **{f"{k}_mean": v for k, v in shares.items()},
    ...                         **{f"{k}_std": 0.0 for k in shares}})
    >>> plot_token_shares(summary).axes[0].get_xlabel()
    'block'
    """
    cols, series = _series(summary)
    several = len({agg for _, agg in series}) > 1
    fig, axes = _figure(len(series), width=4.0)
    for ax, ((model, agg), rows) in zip(axes, series.items()):
        layers = cols["layer"][rows].astype(int)
        for name, colour in (("patch", "tab:blue"), ("register", "tab:red"),
                             ("cls", "tab:gray")):
            ax.plot(layers, cols[f"{name}_share_mean"][rows].astype(float), marker=".",
                    color=colour, label=f"{name} tokens")
        ax.plot(layers, cols["mass_in_box_mean"][rows].astype(float), "--", color="tab:green",
                label="mass in box")
        ax.set_ylim(0, 1)
        ax.set_xlabel("block")
        ax.set_title(_label(model, agg, several), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
