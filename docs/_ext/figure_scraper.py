"""A sphinx-gallery image scraper for matplotlib ``Figure`` objects made without ``pyplot``.

:mod:`sk_a2.plot` builds ``matplotlib.figure.Figure`` objects directly (nothing is registered
with pyplot), so sphinx-gallery's default scraper does not see them. This scraper saves every
``Figure`` that a code block leaves in the example's namespace (a variable, or a list, tuple or
dict of them) and that was not saved before.
"""

from pathlib import Path


def _figures(value):
    from matplotlib.figure import Figure

    if isinstance(value, Figure):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _figures(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _figures(item)


class FigureScraper:
    """Callable scraper; remembers the figures it has saved, per example."""

    def __init__(self):
        self.seen = {}

    def __repr__(self):
        return "FigureScraper()"

    def __call__(self, block, block_vars, gallery_conf):
        from sphinx_gallery.scrapers import figure_rst

        seen = self.seen.setdefault(block_vars["src_file"], set())
        paths = []
        for value in list(block_vars["example_globals"].values()):
            for fig in _figures(value):
                if id(fig) in seen:
                    continue
                seen.add(id(fig))
                path = Path(next(block_vars["image_path_iterator"]))
                fig.savefig(path, dpi=90, bbox_inches="tight")
                paths.append(str(path))
        return figure_rst(paths, gallery_conf["src_dir"])
