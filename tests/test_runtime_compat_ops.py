"""The runtime's numpy pieces for compat="original" and matching="exact" bundles: PIL's NEAREST
resize against Pillow (and the model), the exact assignment against scipy and enumeration."""

import numpy as np
import pytest
from PIL import Image

from dmm_deploy.runtime.assignment import linear_sum_assignment
from dmm_deploy.runtime.imaging import frame_to_input, pil_nearest_index, resize

# -- PIL's NEAREST in numpy -------------------------------------------------------------------

SIZES = [((480, 854), (255, 448)), ((480, 854), (96, 160)), ((37, 61), (100, 23)), ((7, 5), (7, 9))]


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_pil_nearest_resize_equals_pillow(src, dst):
    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (*src, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb).resize(dst[::-1], Image.NEAREST))
    got = resize(rgb.transpose(2, 0, 1), dst, "pil-nearest").transpose(1, 2, 0)
    np.testing.assert_array_equal(got, want)
    labels = g.integers(0, 5, src, dtype=np.uint8)  # label maps ("L" / "P" images) too
    want = np.asarray(Image.fromarray(labels).resize(dst[::-1], Image.NEAREST))
    np.testing.assert_array_equal(resize(labels, dst, "pil-nearest"), want)


def test_pil_nearest_index_equals_the_models_and_frames_match():
    torch = pytest.importorskip("torch")
    from dmm_deploy.model.net import frame_to_input as t_input
    from dmm_deploy.model.net import pil_nearest_index as t_index
    from dmm_deploy.model.net import resize_labels, resize_masks

    for n_in, n_out in [(480, 255), (854, 448), (255, 480), (1, 3), (97, 97)]:
        np.testing.assert_array_equal(pil_nearest_index(n_in, n_out), t_index(n_in, n_out))
    g = np.random.default_rng(1)
    img = g.integers(0, 256, (97, 171, 3), dtype=np.uint8)
    for size in [(255, 448), (40, 70)]:
        want = t_input(img, size, "nearest")[0].numpy()
        np.testing.assert_array_equal(frame_to_input(img, size, "nearest"), want)
    masks = g.random((2, 97, 171)) > 0.5
    want = resize_masks(torch.from_numpy(masks), (40, 70), "pil-nearest").numpy()
    np.testing.assert_array_equal(resize(masks.astype(np.float32), (40, 70), "pil-nearest"), want)
    labels = g.integers(0, 9, (40, 70), dtype=np.uint8)
    want = resize_labels(torch.from_numpy(labels), (97, 171)).numpy()
    np.testing.assert_array_equal(resize(labels, (97, 171), "pil-nearest"), want)


def test_pil_nearest_refuses_empty_sizes():
    with pytest.raises(ValueError, match="positive"):
        pil_nearest_index(0, 3)


# -- the exact assignment in numpy --------------------------------------------------------------


def _problems(seed: int, count: int):
    """Random (n, m) costs, n <= m: Gaussian; small integers (many ties); zero padding
    columns as the matcher's (P <= O: O + 1 - P zero columns); n = 1, m = 1, n = m."""
    g = np.random.default_rng(seed)
    yield np.zeros((1, 1))
    yield np.array([[0.5, -1.0, -1.0]])
    yield np.zeros((3, 3))
    for t in range(count):
        n = int(g.integers(1, 9))
        m = int(g.integers(n, 15))
        kind = t % 4
        if kind == 0:
            c = g.normal(size=(n, m))
        elif kind == 1:
            c = g.integers(-2, 2, (n, m)).astype(np.float64)
        elif kind == 2:  # the matcher's padding: p real proposals, then zero-cost empties
            p = int(g.integers(0, n + 1))
            c = np.zeros((n, n + 1))
            c[:, :p] = -g.random((n, p))
        else:  # equal rows (identical objects) and equal columns (duplicate detections)
            c = np.repeat(np.repeat(g.normal(size=(n, 2)), (m + 1) // 2, axis=1)[:, :m], 1, 0)
            c[n // 2 :] = c[0]
        yield c


def test_exact_assignment_equals_scipy_including_ties():
    scipy_opt = pytest.importorskip("scipy.optimize")
    count = 0
    for c in _problems(0, 800):
        rows, cols = scipy_opt.linear_sum_assignment(c)
        got = linear_sum_assignment(c)
        assert got.dtype == np.int64 and len(set(got.tolist())) == c.shape[0]
        assert c[np.arange(c.shape[0]), got].sum() == pytest.approx(c[rows, cols].sum(), abs=1e-12)
        # the same tie rule: the same columns, not only the same total
        np.testing.assert_array_equal(got, cols, err_msg=str(c))
        count += 1
    assert count == 803


def test_exact_assignment_is_optimal_by_enumeration():
    """Without scipy: brute force over all injective assignments of small problems."""
    from itertools import permutations

    g = np.random.default_rng(5)
    for _ in range(60):
        n = int(g.integers(1, 4))
        m = int(g.integers(n, 6))
        c = np.round(g.normal(size=(n, m)), 1)
        best = min(sum(c[i, p[i]] for i in range(n)) for p in permutations(range(m), n))
        got = linear_sum_assignment(c)
        assert c[np.arange(n), got].sum() == pytest.approx(best, abs=1e-12)


def test_exact_assignment_refuses_bad_costs():
    with pytest.raises(ValueError, match="n <= m"):
        linear_sum_assignment(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        linear_sum_assignment(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        linear_sum_assignment(np.zeros(3))


def test_detector_refuses_a_frame_too_thin_to_resize():
    """A frame whose resized side would be 0 pixels: one clear error, not a broken graph call."""
    from dmm_deploy.runtime.proposals import MaskRCNNDetector

    spec = {
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "cell_anchors": [[[-16.0, -16.0, 16.0, 16.0]]],
        "min_size": 160,
        "max_size": 267,
        "size_divisible": 32,
    }
    det = MaskRCNNDetector(spec, None, None)
    image, size = det.preprocess(np.zeros((120, 160, 3), np.uint8))
    assert size == (160, 213) and image.shape == (1, 3, 160, 224)
    with pytest.raises(ValueError, match=r"frame of 1x300 is too thin for the detector") as e:
        det.preprocess(np.zeros((1, 300, 3), np.uint8))
    assert "\n" not in str(e.value)
