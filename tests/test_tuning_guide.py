"""The worked example of docs/tuning.md runs, and fits its model on the train rows alone.

The example names ``imgfocus_vits14`` at 112 px on 400 synthetic images; here the same code runs
with a tiny random-weight ViT (``timm:test_vit`` from a weights file), 64 px images, 16/32 px
crops and 80 images. Every replaced piece must be in the page, so a change to the example that
this test does not follow fails it.
"""

import re
from pathlib import Path

import numpy as np
import sklearn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "tuning.md"
#: (text in the guide, its replacement here, how often it occurs)
TINY = (
    ('"imgfocus_vits14"', '"timm:test_vit", weights=TINY_WEIGHTS', 2),
    ("n_samples=400", "n_samples=80", 1),
    ("image_size=112", "image_size=64", 3),
    ("[(28,), (56,)]", "[(16,), (32,)]", 1),
)


def worked_example():
    section = GUIDE.read_text(encoding="utf-8").split("## A worked example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_guide_example_tunes_on_val_and_refits_on_train(tiny_vit_file, capsys):
    code = worked_example()
    assert "refit=False" in code and "PredefinedSplit" in code and ">>>" not in code
    for text, tiny, count in TINY:
        assert code.count(text) == count, text
        code = code.replace(text, tiny)
    namespace = {"TINY_WEIGHTS": str(tiny_vit_file)}
    exec(compile(code, str(GUIDE), "exec"), namespace)
    assert "chosen on val:" in capsys.readouterr().out

    search, pipe, model, data = (namespace[k] for k in ("search", "pipe", "model", "data"))
    best = search.best_params_
    assert not hasattr(search, "best_estimator_")  # refit=False: nothing fitted on train + val
    for key, values in search.param_grid.items():
        assert best[key] in values
    assert len(search.cv_results_["params"]) == 48
    assert model.get_params()["crop__layer"] == best["crop__layer"]

    # oracle: the guide's model is the chosen setting fitted on the train rows, not train + val
    train = data.split == "train"
    on_train = clone(pipe).set_params(**best).fit(data.images[train], data.target[train])
    np.testing.assert_allclose(model[-1].coef_, on_train[-1].coef_, rtol=1e-6)

    # the trap: refit=True fits the chosen setting on every row of the search, train + val
    X, y, groups, cv = (namespace[k] for k in ("X", "y", "groups", "cv"))
    with sklearn.config_context(enable_metadata_routing=True):
        refitted = GridSearchCV(clone(pipe), {k: [v] for k, v in best.items()},
                                scoring=namespace["worst_group_scorer"], cv=cv)
        refitted.fit(X, y, groups=groups)
    on_both = clone(pipe).set_params(**best).fit(X, y)
    assert len(X) > train.sum()
    np.testing.assert_allclose(refitted.best_estimator_[-1].coef_, on_both[-1].coef_, rtol=1e-6)
    assert not np.allclose(refitted.best_estimator_[-1].coef_, model[-1].coef_)
