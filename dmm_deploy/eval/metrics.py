"""Per-frame DAVIS measures: region similarity J, boundary measure F, and their statistics.

The definitions follow the DAVIS 2017 evaluation:

- J (region similarity): ``|gt & pred| / |gt | pred|``, and 1 when both masks are empty.
- F (contour accuracy): boundaries of both masks are taken with :func:`seg2bmap` at full
  resolution; a boundary pixel of one mask is *matched* when a boundary pixel of the other lies
  within a disk of radius ``bound_pix = ceil(bound_th * diagonal)`` (``bound_th`` >= 1 is taken
  as pixels directly). Precision = matched prediction boundary / prediction boundary, recall =
  matched ground-truth boundary / ground-truth boundary, F = 2PR / (P + R) (0 when P + R = 0).
  An empty prediction boundary against a non-empty ground-truth one gives P = 1, R = 0; the
  reverse P = 0, R = 1; both empty P = R = 1 (so F = 1).
- Statistics of a sequence of per-frame values X (:func:`db_statistics`): Mean = mean(X),
  Recall = mean(X > 0.5), Decay = mean of the first of four overlapping frame bins minus mean
  of the last one.

Everything is numpy only; the disk dilation is exact and is taken row by row from prefix sums.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "boundary_measure",
    "db_statistics",
    "dilate_disk",
    "disk",
    "disk_radius",
    "region_similarity",
    "seg2bmap",
]


def disk(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` bool disk: offsets ``(dy, dx)`` with ``dx**2 + dy**2 <= r**2``."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    d = np.arange(-r, r + 1)
    return d[:, None] ** 2 + d[None, :] ** 2 <= r * r


MAX_BOUND_PIXELS = 1024
"""Largest boundary tolerance in pixels (the official value is ~8 at 480p): a disk beyond it is
larger than any DAVIS frame and only costs time."""


def disk_radius(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Tolerance radius in pixels: ``ceil(bound_th * sqrt(H**2 + W**2))``, or ``bound_th`` if >= 1.

    A ``bound_th`` >= 1 is a radius in pixels and must be a whole number (the DAVIS evaluator
    would build an even-sized, off-centre structuring element from a fractional radius).
    """
    if not bound_th > 0:
        raise ValueError(f"bound_th must be > 0, got {bound_th}")
    if not bound_th <= MAX_BOUND_PIXELS:
        raise ValueError(
            f"bound_th must be a fraction of the diagonal (< 1) or at most {MAX_BOUND_PIXELS} "
            f"pixels, got {bound_th}"
        )
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(
                f"bound_th >= 1 is a radius in pixels and must be a whole number, got {bound_th}"
            )
        return int(bound_th)
    h, w = int(shape[0]), int(shape[1])
    # the diagonal as DAVIS computes it (the norm of the shape vector), then the ceiling
    return math.ceil(bound_th * math.sqrt(h * h + w * w))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a binary mask (over the last two axes), DAVIS convention.

    A pixel is on the boundary when it differs from its right, bottom or bottom-right neighbour
    (pixels beyond the right/bottom edge count as background); on the last row only the right
    neighbour is compared, on the last column only the bottom one, and the bottom-right corner
    pixel is never a boundary.

    Args:
        seg: ``(..., H, W)`` array; non-zero is foreground.

    Returns:
        ``(..., H, W)`` bool array.
    """
    seg = np.asarray(seg) != 0
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[..., :, :-1] = seg[..., :, 1:]
    s[..., :-1, :] = seg[..., 1:, :]
    se[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[..., -1, :] = seg[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by :func:`disk` ``(radius)`` over the last two axes (outside is empty).

    Equal to ``scipy.ndimage.binary_dilation(mask, disk(radius))`` per 2-D slice. The disk is
    the union of its rows: row ``dy`` spans ``|dx| <= floor(sqrt(r^2 - dy^2))``, so the result
    is an OR of vertically shifted horizontal dilations, each read off a prefix sum.

    Args:
        mask: ``(..., H, W)`` bool array.
        radius: disk radius r >= 0 in pixels.

    Returns:
        ``(..., H, W)`` bool array.
    """
    mask = np.asarray(mask, dtype=bool)
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if r == 0 or mask.size == 0:
        return mask.copy()
    h, w = mask.shape[-2:]
    pad = [(0, 0)] * (mask.ndim - 1) + [(r + 1, r)]
    csum = np.cumsum(np.pad(mask, pad), axis=-1, dtype=np.int32)
    # sum of mask[x-k : x+k+1] = csum[x + k + r + 1] - csum[x - k + r]  (padded indices)
    half = {dy: math.isqrt(r * r - dy * dy) for dy in range(r + 1)}
    rows = {}
    for k in set(half.values()):
        rows[k] = csum[..., r + k + 1 : r + k + 1 + w] > csum[..., r - k : r - k + w]
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        row = rows[half[abs(dy)]]
        if dy >= h or -dy >= h:
            continue
        # out[y] |= row[y + dy]
        if dy >= 0:
            out[..., : h - dy, :] |= row[..., dy:, :]
        else:
            out[..., -dy:, :] |= row[..., : h + dy, :]
    return out


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray | float:
    """Jaccard index J of binary masks over the last two axes (1 where both are empty).

    Args:
        gt: ``(..., H, W)`` ground-truth mask (non-zero is foreground).
        pred: predicted mask of the same shape.

    Returns:
        ``(...)`` float64 array, or a float for 2-D inputs.
    """
    gt = np.asarray(gt) != 0
    pred = np.asarray(pred) != 0
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j) if j.ndim == 0 else j


def boundary_measure(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008
) -> tuple[float, float, float]:
    """Boundary F measure of one pair of 2-D binary masks, with its precision and recall.

    Args:
        gt: ``(H, W)`` ground-truth mask (non-zero is foreground).
        pred: ``(H, W)`` predicted mask.
        bound_th: tolerance as a fraction of the image diagonal (< 1) or in pixels (>= 1).

    Returns:
        ``(F, precision, recall)``.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(
            f"gt and pred must be 2-D masks of the same shape, got {gt.shape} and {pred.shape}"
        )
    r = disk_radius(gt.shape, bound_th)
    return _boundary_from_maps(seg2bmap(gt), seg2bmap(pred), r)


def _boundary_from_maps(gt_b: np.ndarray, pred_b: np.ndarray, r: int) -> tuple[float, float, float]:
    n_gt = int(np.count_nonzero(gt_b))
    n_pred = int(np.count_nonzero(pred_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        # Both maps only matter near their boundary pixels: dilate inside their joint box
        # grown by r (everything outside it is empty either way).
        both = gt_b | pred_b
        ys = np.flatnonzero(both.any(axis=1))
        xs = np.flatnonzero(both.any(axis=0))
        y0, y1 = max(ys[0] - r, 0), min(ys[-1] + r + 1, both.shape[0])
        x0, x1 = max(xs[0] - r, 0), min(xs[-1] + r + 1, both.shape[1])
        g = gt_b[y0:y1, x0:x1]
        p = pred_b[y0:y1, x0:x1]
        pred_match = np.count_nonzero(p & dilate_disk(g, r))
        gt_match = np.count_nonzero(g & dilate_disk(p, r))
        precision = pred_match / n_pred
        recall = gt_match / n_gt
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return float(f), float(precision), float(recall)


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of a sequence of per-frame values (DAVIS definitions).

    Recall is the fraction of values above 0.5. Decay splits the frames into four bins whose
    edges are ``round(linspace(1, T, 5)) - 1`` (neighbouring bins share their edge frame) and
    returns mean(first bin) - mean(last bin).

    Args:
        values: 1-D array of T >= 1 per-frame values.

    Returns:
        ``(mean, recall, decay)``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {x.shape}")
    mean = float(np.mean(x))
    recall = float(np.mean(x > 0.5))
    ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.int64)
    bins = [x[ids[i] : ids[i + 1] + 1] for i in range(4)]
    decay = float(np.mean(bins[0]) - np.mean(bins[3]))
    return mean, recall, decay
