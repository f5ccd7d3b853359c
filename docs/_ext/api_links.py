"""Link inline code of the user guide to the API reference.

In the Markdown pages, inline code that names a public object of the API reference
(```AttentionCropper```, ```sk_a2.datasets.make_spurious_images()```,
```CropEmbedder(crop_source="original")```) becomes a link to that object's page. Only names
listed in ``API_MODULES`` are linked, so every link resolves.
"""

import importlib
import re

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms import SphinxTransform

#: module -> the module its names are documented under in ``api.rst``.
API_MODULES = {
    "sk_a2": "sk_a2",
    "sk_a2.datasets": "sk_a2.datasets",
    "sk_a2.metrics": "sk_a2.metrics",
    "sk_a2.localization": "sk_a2.localization",
    "sk_a2.localization_plot": "sk_a2.localization_plot",
    "sk_a2.plot": "sk_a2.plot",
    "sk_a2.adapter": "sk_a2.adapter",
    "sk_a2.report": "sk_a2.report",
}
_NAME = re.compile(r"^([A-Za-z_][\w.]*)(\(.*\))?$")


def public_targets():
    """``{spelling: documented full name}`` for every public name of the API reference."""
    targets = {}
    documented = {}
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            full = f"{module_name}.{name}"
            key = id(obj) if callable(obj) else full
            documented.setdefault(key, full)
            targets[full] = documented[key]
            targets.setdefault(name, documented[key])
    return targets


class APILinks(SphinxTransform):
    """Wrap matching ``literal`` nodes of non-API pages in ``pending_xref`` nodes."""

    default_priority = 5

    def apply(self):
        if self.env.docname.startswith(("generated/", "api")):
            return
        targets = self.env.app.sk_a2_targets
        for node in list(self.document.findall(nodes.literal)):
            if isinstance(node.parent, (nodes.reference, addnodes.pending_xref)):
                continue
            match = _NAME.match(node.astext().strip())
            if not match or match.group(1) not in targets:
                continue
            xref = addnodes.pending_xref(
                "", refdomain="py", reftype="obj", reftarget=targets[match.group(1)],
                refexplicit=True, refwarn=False, refdoc=self.env.docname,
            )
            node.replace_self(xref)
            xref += node


def setup(app):
    app.sk_a2_targets = public_targets()
    app.add_transform(APILinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
