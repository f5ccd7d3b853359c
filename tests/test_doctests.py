"""The Examples sections of the docstrings run, and every public name of the API reference has one.

Each module of ``sk_a2`` is one test: its docstring examples run as doctests (on the embedded
synthetic data and the offline ``imgfocus_vits14`` weights, never the hub).
"""

import doctest
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
from numpydoc.docscrape import ClassDoc, FunctionDoc

import sk_a2

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(sk_a2.__path__, "sk_a2.") if m.name != "sk_a2.__main__"
)
#: The modules of the API reference (docs/api.rst).
API_MODULES = ("sk_a2", "sk_a2.datasets", "sk_a2.metrics", "sk_a2.localization",
               "sk_a2.localization_plot", "sk_a2.plot", "sk_a2.adapter")


def public_objects():
    """``(module name, name, object)`` for every public class and function of the API."""
    out = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                out.append((module_name, name, obj))
    return out


@pytest.mark.parametrize("module_name", ["sk_a2"] + MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    failures = []
    for test in finder.find(module, module_name):
        if test.examples and not test.name.startswith(module_name + "._"):
            result = runner.run(test, out=failures.append)
            assert result.attempted > 0
    assert not failures, "".join(failures)


@pytest.mark.parametrize("module_name, name, obj", public_objects(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_public_docstring_is_numpydoc_with_examples(module_name, name, obj):
    doc = ClassDoc(obj) if inspect.isclass(obj) else FunctionDoc(obj)
    assert doc["Summary"], f"{module_name}.{name} has no summary line"
    assert any(">>>" in line for line in doc["Examples"]), (
        f"{module_name}.{name} has no Examples section with code"
    )
    if not inspect.isclass(obj) and inspect.signature(obj).parameters:
        documented = {n for p in doc["Parameters"] for n in re.split(r",\s*", p.name)}
        assert documented, f"{module_name}.{name} documents no parameter"


def test_api_reference_lists_every_public_name():
    api = (ROOT / "docs" / "api.rst").read_text()
    listed = set(re.findall(r"^   (\w+)$", api, flags=re.M))
    listed |= set(re.findall(r"^\.\. data:: (\w+)$", api, flags=re.M))
    missing = [f"{m}.{n}" for m in API_MODULES for n in importlib.import_module(m).__all__
               if n not in listed]
    assert not missing, f"not in docs/api.rst: {missing}"
