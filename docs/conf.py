"""Sphinx configuration of the sk_a2 documentation site.

Build it (from the repository root, with ``pip install -e ".[docs]"``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The start page (``index.md``) is a landing page whose hidden toctree is the top navigation:
Install, Getting started, User guide, API, Examples, Datasets, Reproducing the paper,
Performance. The API reference is generated from the docstrings (autosummary + numpydoc), the
user guide is the other Markdown pages of this folder (MyST, listed by ``user_guide.md``), the
gallery is generated from ``examples/plot_*.py`` by sphinx-gallery (each runs at build time on
the embedded synthetic data with the offline ``imgfocus_vits14`` weights) and the model zoo page
from the model registry (``docs/_ext/model_zoo.py``, no weights downloaded).
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sk_a2  # noqa: E402
from figure_scraper import FigureScraper  # noqa: E402
from intersphinx_local import intersphinx_mapping  # noqa: E402, F401

project = "sk-a2"
author = "sk-a2 contributors"
copyright = "sk-a2 contributors"
version = release = sk_a2.__version__

root_doc = "index"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "api_links",
    "model_zoo",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_templates", "_inventories", "**/GALLERY_HEADER.rst"]
templates_path = ["_templates"]

# ---- API reference
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
add_module_names = False

# ---- user guide (Markdown)
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
# The Markdown pages also link files of the repository outside docs/ (benchmarks, examples):
# they are valid on GitHub and in a clone, not pages of the site.
suppress_warnings = ["myst.xref_missing"]

# ---- gallery
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(^|/)(?!plot_)[^/]+\.py$",
    "download_all_examples": False,
    "reference_url": {"sk_a2": None},
    "doc_module": ("sk_a2",),
    "backreferences_dir": "generated/backreferences",
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "matplotlib_animations": False,
    # sk_a2.plot returns matplotlib Figures without pyplot: collect those too.
    "image_scrapers": ("matplotlib", FigureScraper()),
}

# ---- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"sk-a2 {release}"
html_theme_options = {
    "logo": {"text": "sk-a2"},
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 8,  # the eight sections of index.md, no "More" menu
    "navbar_align": "left",
    "navbar_end": ["theme-switcher"],
    "navbar_persistent": ["search-button"],
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False

# ---- the site's sections (the top navigation, index.md's toctree); the user guide has its own
# sidebar. Pages that are a section on their own get no left sidebar (it would be empty).
SINGLE_PAGES = ["index", "install", "getting_started", "datasets", "reproduce", "performance"]
html_sidebars = {page: [] for page in SINGLE_PAGES}

# ---- user guide order: these pages first (those that exist), then any other Markdown page that
# is not a section of its own, then the model zoo
USER_GUIDE = ["demo", "inputs", "crop_source", "localization", "adapter", "tuning", "cli",
              "architecture", "ray"]
USER_GUIDE_ROOT = "user_guide"


def user_guide_pages(folder=HERE):
    """Docnames of the user guide's pages, in reading order."""
    present = sorted(p.stem for p in Path(folder).glob("*.md")
                     if p.stem not in SINGLE_PAGES and p.stem != USER_GUIDE_ROOT)
    pages = [n for n in USER_GUIDE if n in present] + [n for n in present if n not in USER_GUIDE]
    return pages + ["model_zoo"]


def _fill_contents(app, docname, source):
    if docname == USER_GUIDE_ROOT:
        source[0] = source[0].replace("{user_guide_pages}", "\n".join(user_guide_pages()))
    elif docname == "contents":
        links = ", ".join(f":doc:`{n}`" for n in user_guide_pages())
        source[0] = source[0].replace("{user_guide_links}", links)


def _reread_contents(app, env, added, changed, removed):
    """The user guide's toctree depends on which Markdown pages exist: reread it every build."""
    return [USER_GUIDE_ROOT, "contents"]


def setup(app):
    app.connect("source-read", _fill_contents)
    app.connect("env-get-outdated", _reread_contents)
