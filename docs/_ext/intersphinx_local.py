"""Intersphinx inventories for scikit-learn, NumPy and PyTorch that work without network.

The build has no network access by default, and an inventory that cannot be fetched is a warning
(an error under ``-W``). So a project is linked only when its inventory is at hand:

* ``docs/_inventories/<project>.inv`` (a copy of the project's ``objects.inv``), or
* ``SK_A2_DOCS_ONLINE=1`` in the environment: fetched from the project's site at build time.

Otherwise that project is left out of ``intersphinx_mapping`` and its names render as code,
without links.
"""

import os
from pathlib import Path

INVENTORIES = Path(__file__).resolve().parent.parent / "_inventories"

PROJECTS = {
    "sklearn": "https://scikit-learn.org/stable/",
    "numpy": "https://numpy.org/doc/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "python": "https://docs.python.org/3/",
}


def build_mapping(online=None, folder=INVENTORIES):
    """``intersphinx_mapping`` with only the projects whose inventory is reachable."""
    if online is None:
        online = os.environ.get("SK_A2_DOCS_ONLINE", "") == "1"
    mapping = {}
    for name, url in PROJECTS.items():
        local = Path(folder) / f"{name}.inv"
        if local.is_file():
            mapping[name] = (url, str(local))
        elif online:
            mapping[name] = (url, None)
    return mapping


intersphinx_mapping = build_mapping()
