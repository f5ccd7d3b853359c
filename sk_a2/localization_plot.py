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
        :func:`sk_a2.localization.summarize_report` of one or several models.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------

    >>> import numpy as np
    >>> import pandas as pd
    >>> summary = pd.DataFrame({
    ...     "model": ["small"] * 3 + ["large"] * 3, "head_aggregation": "mean",
    ...     "layer": [0, 1, 2] * 2, "n_params": [2e7] * 3 + [3e8] * 3, "n_images": 8})
    >>> for metric in ("mass_in_box", "hit", "entropy", "top10_mass", "top25_mass",
    ...                "cls_share", "register_share", "patch_share"):
    ...     summary[metric + "_mean"] = np.linspace(0.2, 0.6, 6)
    ...     summary[metric + "_std"] = 0.05
    >>> from sk_a2.localization_plot import plot_mass_hit_vs_size
    >>> fig = plot_mass_hit_vs_size(summary)
    >>> len(fig.axes)
    2
    """
    return _two_panels(summary, _draw_vs_size, "parameters (millions)", "vs. model size",
                       xscale="log")


def plot_per_layer(summary):
    """Mass in box and hit rate per block, one line per model (stars: the last block).

    Parameters
    ----------
    summary : DataFrame or Bunch
        :func:`sk_a2.localization.summarize_report` of one or several models.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------

    >>> import numpy as np
    >>> import pandas as pd
    >>> summary = pd.DataFrame({
    ...     "model": ["small"] * 3 + ["large"] * 3, "head_aggregation": "mean",
    ...     "layer": [0, 1, 2] * 2, "n_params": [2e7] * 3 + [3e8] * 3, "n_images": 8})
    >>> for metric in ("mass_in_box", "hit", "entropy", "top10_mass", "top25_mass",
    ...                "cls_share", "register_share", "patch_share"):
    ...     summary[metric + "_mean"] = np.linspace(0.2, 0.6, 6)
    ...     summary[metric + "_std"] = 0.05
    >>> from sk_a2.localization_plot import plot_per_layer
    >>> fig = plot_per_layer(summary)
    >>> len(fig.axes)
    2
    """
    return _two_panels(summary, _draw_per_layer, "block", "per block")


def plot_token_shares(summary):
    """Share of the CLS attention on the CLS, register and patch tokens per block, per model.

    Parameters
    ----------
    summary : DataFrame or Bunch
        :func:`sk_a2.localization.summarize_report` of one or several models.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------

    >>> import numpy as np
    >>> import pandas as pd
    >>> summary = pd.DataFrame({
    ...     "model": ["small"] * 3 + ["large"] * 3, "head_aggregation": "mean",
    ...     "layer": [0, 1, 2] * 2, "n_params": [2e7] * 3 + [3e8] * 3, "n_images": 8})
    >>> for metric in ("mass_in_box", "hit", "entropy", "top10_mass", "top25_mass",
    ...                "cls_share", "register_share", "patch_share"):
    ...     summary[metric + "_mean"] = np.linspace(0.2, 0.6, 6)
    ...     summary[metric + "_std"] = 0.05
    >>> from sk_a2.localization_plot import plot_token_shares
    >>> fig = plot_token_shares(summary)
    >>> len(fig.axes) >= 1
    True
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
