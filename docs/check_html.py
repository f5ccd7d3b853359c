"""Check a built site: every public name has a page, every gallery example shows an image.

Run after the build (``python docs/check_html.py [docs/_build/html]``); exits 1 listing what is
missing. Checked:

* ``generated/<module>.<name>.html`` for every public class and function of the API reference
  (the modules of ``docs/_ext/api_links.py``), and that the page documents that object;
* ``auto_examples/<stem>.html`` for every ``examples/plot_*.py``, with at least one ``<img>``
  of that example's figures (``sphx_glr_<stem>_NNN.png``) that exists on disk;
* the model zoo page lists every :func:`sk_a2.list_models` name;
* every user-guide Markdown page of ``docs/`` was rendered;
* the top navigation of ``index.html`` is exactly :data:`NAVBAR`, in order, with no "More"
  menu, each entry linking a page that exists; the start page shows its picture and a card for
  each of those pages;
* no page has an empty "Section Navigation" sidebar.
"""

import importlib
import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]

from api_links import API_MODULES  # noqa: E402

#: The top navigation, in order (the hidden toctree of ``index.md``).
NAVBAR = ("Install", "Getting started", "User guide", "API", "Examples", "Datasets",
          "Reproducing the paper", "Performance")


def api_problems(html):
    problems = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            page = _page_for(html, module_name, name, obj)
            if page is None:
                problems.append(f"no API page for {module_name}.{name}")
    return problems


def _page_for(html, module_name, name, obj):
    """The generated page that documents ``obj`` (it may be re-exported by several modules)."""
    for candidate in (f"{module_name}.{name}", f"{obj.__module__}.{name}",
                      f"sk_a2.{name}", f"sk_a2.metrics.{name}"):
        page = html / "generated" / f"{candidate}.html"
        if page.is_file() and f'id="{candidate}"' in page.read_text(encoding="utf-8"):
            return page
    return None


def gallery_problems(html):
    problems = []
    for script in sorted((ROOT / "examples").glob("plot_*.py")):
        page = html / "auto_examples" / f"{script.stem}.html"
        if not page.is_file():
            problems.append(f"no gallery page for examples/{script.name}")
            continue
        images = re.findall(rf'<img[^>]+src="([^"]*sphx_glr_{script.stem}_\d+\.png)"',
                            page.read_text(encoding="utf-8"))
        if not images:
            problems.append(f"gallery page of examples/{script.name} shows no image")
        missing = [src for src in images if not (page.parent / src).resolve().is_file()]
        if missing:
            problems.append(f"gallery page of examples/{script.name} links missing {missing}")
    return problems


def other_problems(html):
    from sk_a2 import list_models

    problems = []
    zoo = (html / "model_zoo.html").read_text(encoding="utf-8") if (
        html / "model_zoo.html").is_file() else ""
    problems += [f"model zoo lacks {n}" for n in list_models() if f">{n}<" not in zoo]
    problems += [f"user guide page {p.name} not rendered" for p in DOCS.glob("*.md")
                 if not (html / f"{p.stem}.html").is_file()]
    return problems


def navbar_problems(html):
    index = html / "index.html"
    if not index.is_file():
        return ["no index.html"]
    text = index.read_text(encoding="utf-8")
    bar = re.search(r'<ul class="bd-navbar-elements[^"]*">(.*?)</ul>', text, re.S)
    if bar is None:
        return ["index.html has no top navigation"]
    links = re.findall(r'<a class="nav-link[^"]*" href="([^"]+)"[^>]*>\s*(.*?)\s*</a>',
                       bar.group(1), re.S)
    problems = []
    if [title for _, title in links] != list(NAVBAR):
        problems.append(f"top navigation is {[t for _, t in links]}, expected {list(NAVBAR)}")
    if "dropdown" in bar.group(1):
        problems.append("the top navigation folds entries into a dropdown menu")
    problems += [f"top navigation entry {title!r} links missing {href}"
                 for href, title in links if not (html / href.split("#")[0]).is_file()]
    cards = set(re.findall(r'<a class="sk-card" href="([^"]+)"', text))
    problems += [f"index.html has no card for {title!r}" for href, title in links
                 if href not in cards]
    pictures = re.findall(r'<img[^>]+src="([^"]*a2_crops\.png)"', text)
    if not pictures or not (html / pictures[0]).is_file():
        problems.append("index.html does not show _static/a2_crops.png")
    return problems


def sidebar_problems(html):
    """Pages whose left sidebar has a "Section Navigation" heading and nothing under it."""
    problems = []
    for page in sorted(html.rglob("*.html")):
        rel = page.relative_to(html)
        if rel.parts[0].startswith("_"):
            continue
        nav = re.search(r'<nav class="bd-docs-nav[^"]*"[^>]*>(.*?)</nav>',
                        page.read_text(encoding="utf-8"), re.S)
        if nav is not None and "<li" not in nav.group(1):
            problems.append(f"{rel}: empty Section Navigation sidebar")
    return problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    html = Path(argv[0]) if argv else DOCS / "_build" / "html"
    problems = (api_problems(html) + gallery_problems(html) + other_problems(html)
                + navbar_problems(html) + sidebar_problems(html))
    for problem in problems:
        print(problem)
    n_pages = len(list((html / "generated").glob("*.html")))
    n_examples = len(list((ROOT / "examples").glob("plot_*.py")))
    print(f"{html}: {n_pages} API pages, {n_examples} gallery examples, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
