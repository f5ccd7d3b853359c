import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sk_a2.boxes import CropOverlapWarning, crop_resize, greedy_boxes, upsample_maps


def brute_force(a, sizes):
    """Appendix B by exhaustive search, with plain loops and direct sums.

    Row-major scanning keeps the first of equal sums (smallest y, then x); sums closer than
    1e-12 of the total are equal, as documented for greedy_boxes.
    """
    M = a.shape[0]
    tol = 1e-12 * a.sum()
    placed, masses = [], []
    for s in sizes:
        best, best_mass, best_any, best_any_mass = None, -np.inf, None, -np.inf
        for y in range(M - s + 1):
            for x in range(M - s + 1):
                mass = a[y:y + s, x:x + s].sum()
                if mass > best_any_mass + tol:
                    best_any, best_any_mass = (x, y), mass
                free = all(x + s <= px0 or px1 <= x or y + s <= py0 or py1 <= y
                           for px0, py0, px1, py1 in placed)
                if free and mass > best_mass + tol:
                    best, best_mass = (x, y), mass
        if best is None:
            best, best_mass = best_any, best_any_mass
        placed.append((best[0], best[1], best[0] + s, best[1] + s))
        masses.append(best_mass)
    return np.array(placed), np.array(masses)


def box_mass(a, box):
    x0, y0, x1, y1 = box
    return a[y0:y1, x0:x1].sum()


@st.composite
def maps_and_sizes(draw):
    M = draw(st.integers(4, 14))
    n = draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    sizes = sorted(draw(st.lists(st.integers(1, M), min_size=k, max_size=k)), reverse=True)
    if draw(st.booleans()):  # integer maps: every sum is exact, so ties are exact too
        maps = draw(arrays(np.int64, (n, M, M), elements=st.integers(0, 3))).astype(np.float64)
    else:
        maps = draw(arrays(np.float64, (n, M, M), elements=st.floats(0, 1, width=32)))
    return maps, sizes


@settings(max_examples=150, deadline=None)
@given(maps_and_sizes())
def test_greedy_equals_brute_force(data):
    maps, sizes = data
    with _maybe_overlap():
        boxes, scores = greedy_boxes(maps, sizes, return_scores=True)
    assert boxes.shape == (len(maps), len(sizes), 4)
    for a, b, sc in zip(maps, boxes, scores):
        ref_boxes, ref_mass = brute_force(a, sizes)
        got_mass = np.array([box_mass(a, box) for box in b])
        np.testing.assert_allclose(got_mass, ref_mass, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(sc, got_mass, rtol=1e-9, atol=1e-9)
        assert np.all(b[:, 2] - b[:, 0] == sizes) and np.all(b[:, 3] - b[:, 1] == sizes)
        assert b.min() >= 0 and b[:, 2:].max() <= a.shape[0]


class _maybe_overlap:
    """Allow the overlap warning (small maps with many crops) without requiring it."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", CropOverlapWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_boxes_do_not_overlap_when_room():
    rng = np.random.RandomState(0)
    maps = rng.rand(8, 32, 32)
    boxes = greedy_boxes(maps, [12, 8, 8, 4])
    for b in boxes:
        for i in range(4):
            for j in range(i):
                ax0, ay0, ax1, ay1 = b[i]
                bx0, by0, bx1, by1 = b[j]
                assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0


def test_ties_go_to_smallest_y_then_x():
    a = np.zeros((1, 6, 6))
    a[0, 1, 4] = 1.0
    a[0, 4, 1] = 1.0
    a[0, 1, 2] = 1.0  # same row as (4, 1): smallest y wins, then smallest x
    boxes = greedy_boxes(a, [1, 1, 1])
    assert boxes[0].tolist() == [[2, 1, 3, 2], [4, 1, 5, 2], [1, 4, 2, 5]]
    flat = greedy_boxes(np.zeros((1, 5, 5)), [2])
    assert flat[0, 0].tolist() == [0, 0, 2, 2]


def test_peak_is_found():
    a = np.zeros((2, 20, 20))
    a[0, 15, 3] = 5
    a[1, 2, 17] = 5
    boxes = greedy_boxes(a, [4])
    for box, (py, px) in zip(boxes[:, 0], [(15, 3), (2, 17)]):
        assert box[0] <= px < box[2] and box[1] <= py < box[3]


def test_no_room_falls_back_with_one_warning():
    maps = np.random.RandomState(0).rand(3, 8, 8)
    with pytest.warns(CropOverlapWarning, match="3 crop") as record:
        boxes, scores = greedy_boxes(maps, [8, 4], return_scores=True)
    assert len(record) == 1
    for a, b, s in zip(maps, boxes, scores):
        sums = [a[y:y + 4, x:x + 4].sum() for y in range(5) for x in range(5)]
        assert s[1] == pytest.approx(max(sums))


def test_bad_sizes():
    with pytest.raises(ValueError, match="larger than the 8x8 map"):
        greedy_boxes(np.zeros((1, 8, 8)), [9])
    with pytest.raises(ValueError, match="positive integers"):
        greedy_boxes(np.zeros((1, 8, 8)), [0])
    with pytest.raises(ValueError, match="shape"):
        greedy_boxes(np.zeros((8, 8)), [2])


def test_torch_input_stays_torch():
    maps = torch.rand(2, 10, 10)
    boxes = greedy_boxes(maps, [4, 2])
    assert isinstance(boxes, torch.Tensor)
    np.testing.assert_array_equal(boxes.numpy(), greedy_boxes(maps.numpy(), [4, 2]))


def test_upsample_matches_interpolate():
    m = torch.rand(3, 4, 4)
    up = upsample_maps(m, 16)
    ref = F.interpolate(m[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(6, 40), st.integers(6, 40), st.integers(1, 3), st.integers(4, 48),
    st.integers(0, 2**31 - 1),
)
def test_crop_resize_equals_cut_then_interpolate(H, W, k, out, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, H, W, generator=g)
    x0 = torch.randint(0, W - 1, (2, k), generator=g)
    y0 = torch.randint(0, H - 1, (2, k), generator=g)
    x1 = x0 + 1 + (torch.rand(2, k, generator=g) * (W - x0)).long().clamp(max=W - x0 - 1)
    y1 = y0 + 1 + (torch.rand(2, k, generator=g) * (H - y0)).long().clamp(max=H - y0 - 1)
    boxes = torch.stack([x0, y0, x1, y1], -1)
    got = crop_resize(images, boxes, out)
    assert got.shape == (2, k, 3, out, out)
    for b in range(2):
        for j in range(k):
            bx0, by0, bx1, by1 = boxes[b, j].tolist()
            ref = F.interpolate(images[b:b + 1, :, by0:by1, bx0:bx1], size=(out, out),
                                mode="bilinear", align_corners=False)[0]
            torch.testing.assert_close(got[b, j], ref, atol=1e-5, rtol=1e-5)


def test_crop_resize_full_box_is_identity():
    images = torch.rand(1, 3, 16, 16)
    got = crop_resize(images, torch.tensor([[[0, 0, 16, 16]]]), 16)
    torch.testing.assert_close(got[0, 0], images[0], atol=1e-6, rtol=0)
