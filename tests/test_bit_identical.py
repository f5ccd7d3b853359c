"""Results are bit-identical to the stored baseline (``tests/data/baseline_fixture.npz``).

The fixture holds attention maps, boxes, scores, crop embeddings and localization report rows of
tiny random-weight models, computed by ``tests/make_baseline_fixture.py`` from the code before the
attention maps moved to one module (float32, CPU, one thread). The same script's ``compute``
recomputes them here with the current code; every array must be exactly equal.
"""

import os

import numpy as np
import pytest
from make_baseline_fixture import compute

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "baseline_fixture.npz")


@pytest.fixture(scope="module")
def pair():
    with np.load(FIXTURE, allow_pickle=False) as stored:
        expected = {k: stored[k] for k in stored.files}
    return expected, compute()


def test_same_values_as_the_baseline(pair):
    expected, got = pair
    assert sorted(got) == sorted(expected)
    different = [k for k in expected
                 if got[k].shape != expected[k].shape or not np.array_equal(got[k], expected[k])]
    assert not different, f"{len(different)} arrays differ from the baseline: {different[:8]}"


def test_fixture_is_small_and_covers_every_part(pair):
    expected, _ = pair
    assert os.path.getsize(FIXTURE) < 200_000
    kinds = {k.split("/")[0] for k in expected}
    assert kinds == {"maps", "boxes", "scores", "embed", "report"}
