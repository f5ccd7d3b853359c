"""Check a built site: every public name has a page, every gallery example shows an image.

Run after the build (``python docs/check_html.py [docs/_build/html]``); exits 1 listing what is
missing. Checked:

* ``generated/<module>.<name>.html`` for every public class and function of the API reference
  (the modules of ``docs/_ext/api_links.py``), and that the page documents that object;
* ``auto_examples/<stem>.html`` for every ``examples/plot_*.py``, with at least one ``<img>``
  of that example's figures (``sphx_glr_<stem>_NNN.png``) that exists on disk;
* the model zoo page lists every :func:`sk_a2.list_models` name;
* every user-guide Markdown page of ``docs/`` was rendered.
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    html = Path(argv[0]) if argv else DOCS / "_build" / "html"
    problems = api_problems(html) + gallery_problems(html) + other_problems(html)
    for problem in problems:
        print(problem)
    n_pages = len(list((html / "generated").glob("*.html")))
    n_examples = len(list((ROOT / "examples").glob("plot_*.py")))
    print(f"{html}: {n_pages} API pages, {n_examples} gallery examples, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
