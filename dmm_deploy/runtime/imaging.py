"""numpy image operations of the runtime, numerically matching the torch model's.

* :func:`resize` resamples along the last two axes with torch's ``F.interpolate`` conventions:
  ``"bilinear"`` (``align_corners=False``, optionally ``antialias=True``, torch's separable
  anti-aliasing filter) and ``"nearest-exact"``, or with PIL's ``Image.NEAREST``
  (``"pil-nearest"``, :func:`pil_nearest_index`). Index and weight tables are computed in
  float32 as torch's CPU kernels compute them, and cached per (input, output, mode).
* :func:`frame_to_input`, :func:`tight_boxes`, :func:`nms`, :func:`paste_box_masks` and
  :func:`merge_probabilities` are the numpy forms of the model's helpers of the same names.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from dmm_deploy.data.frames import pil_nearest_index

__all__ = [
    "frame_to_input",
    "merge_probabilities",
    "nms",
    "paste_box_masks",
    "pil_nearest_index",
    "resize",
    "tight_boxes",
]


@lru_cache(maxsize=64)
def _table(n_in: int, n_out: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(index (n_out, taps) int64, weight (n_out, taps) float32)`` for one axis."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float32)
    if mode == "pil-nearest":
        return pil_nearest_index(n_in, n_out)[:, None], np.ones((n_out, 1), np.float32)
    if mode == "nearest-exact":
        idx = np.minimum(np.floor((dst + np.float32(0.5)) * scale), n_in - 1).astype(np.int64)
        return idx[:, None], np.ones((n_out, 1), np.float32)
    if mode == "bilinear":
        src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
        src = np.maximum(src, np.float32(0.0))
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        l1 = (src - i0.astype(np.float32)).astype(np.float32)
        return np.stack([i0, i1], 1), np.stack([np.float32(1.0) - l1, l1], 1)
    if mode == "bilinear-aa":
        support = scale if scale >= 1.0 else np.float32(1.0)  # interp_size / 2 = 1
        invscale = np.float32(1.0) / scale if scale >= 1.0 else np.float32(1.0)
        center = scale * (dst + np.float32(0.5))
        xmin = np.maximum((center - support + np.float32(0.5)).astype(np.int64), 0)
        xmax = np.minimum((center + support + np.float32(0.5)).astype(np.int64), n_in)
        taps = int((xmax - xmin).max())
        j = np.arange(taps)[None, :]
        idx = xmin[:, None] + j
        x = ((j + xmin[:, None]).astype(np.float32) - center[:, None] + np.float32(0.5)) * invscale
        w = np.maximum(np.float32(1.0) - np.abs(x), np.float32(0.0)).astype(np.float32)
        w[idx >= xmax[:, None]] = 0.0
        total = w.sum(1, keepdims=True)
        w = np.where(total != 0, w / np.where(total != 0, total, 1), w).astype(np.float32)
        return np.minimum(idx, n_in - 1), w
    raise ValueError(
        f"mode must be 'bilinear', 'bilinear-aa', 'nearest-exact' or 'pil-nearest', got {mode!r}"
    )


def _resample(x: np.ndarray, axis: int, n_out: int, mode: str) -> np.ndarray:
    idx, w = _table(x.shape[axis], n_out, mode)
    if idx.shape[1] == 1:
        return np.take(x, idx[:, 0], axis=axis)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = np.take(x, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
    for t in range(1, idx.shape[1]):
        out += np.take(x, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def resize(
    x: np.ndarray, size: tuple[int, int], mode: str = "bilinear", antialias: bool = False
) -> np.ndarray:
    """Resample the last two axes of ``x`` to ``size = (h, w)``, as ``F.interpolate`` does.

    mode: ``"bilinear"`` (``align_corners=False``; ``antialias`` as torch's),
    ``"nearest-exact"`` or ``"pil-nearest"`` (PIL's ``Image.NEAREST``). The nearest modes keep
    any dtype (they only pick pixels); bilinear resamples float32 (other dtypes are converted).
    A size equal to the input's returns ``x`` unchanged.
    """
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    if mode == "bilinear" and antialias:
        mode = "bilinear-aa"
    if mode not in ("nearest-exact", "pil-nearest") and x.dtype != np.float32:
        x = x.astype(np.float32)
    # width first for downscaling along width (fewer rows to resample after), as torch does
    x = _resample(x, x.ndim - 1, w, mode)
    return _resample(x, x.ndim - 2, h, mode)


def frame_to_input(frame: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(3, h, w)`` float32 in [0, 1] at ``size``, as
    :func:`dmm_deploy.model.frame_to_input`: ``mode`` (the config's ``input_resize``)
    ``"bilinear"`` (antialiased) or ``"nearest"`` (PIL's ``Image.NEAREST`` on the uint8
    pixels)."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    x = np.ascontiguousarray(frame.transpose(2, 0, 1))
    if mode == "nearest":
        x = resize(x, size, "pil-nearest")
    else:
        x = resize(x.astype(np.float32), size, "bilinear", antialias=True)
    return np.clip(x.astype(np.float32) / np.float32(255.0), 0.0, 1.0, dtype=np.float32)


def tight_boxes(masks: np.ndarray, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes of ``masks > threshold`` ``(N, H, W)``: ``boxes (N, 4)`` float32
    ``x_min, y_min, x_max, y_max`` (inclusive) and ``nonempty (N,)``; an empty mask's box is
    the whole image ``0, 0, W - 1, H - 1``."""
    n, h, w = masks.shape
    on = masks > threshold
    rows, cols = on.any(axis=2), on.any(axis=1)
    nonempty = rows.any(axis=1)
    iy, ix = np.arange(h), np.arange(w)
    boxes = np.stack(
        [
            np.where(cols, ix, w).min(axis=1, initial=w),
            np.where(rows, iy, h).min(axis=1, initial=h),
            np.where(cols, ix, -1).max(axis=1, initial=-1),
            np.where(rows, iy, -1).max(axis=1, initial=-1),
        ],
        axis=1,
    ).astype(np.float32)
    whole = np.array([0.0, 0.0, w - 1.0, h - 1.0], np.float32)
    boxes = np.where(nonempty[:, None], boxes, whole).reshape(n, 4)
    return boxes, nonempty


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by non-maximum suppression, in decreasing score order (as
    ``torchvision.ops.nms``: a box is dropped when its IoU with a kept one is above the
    threshold; areas ``(x2 - x1)(y2 - y1)``; float32)."""
    boxes = boxes.astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    thr = np.float32(iou_threshold)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        rest = rest[~suppressed[rest]]
        if not len(rest):
            continue
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        suppressed[rest[inter / (areas[i] + areas[rest] - inter) > thr]] = True
    return np.asarray(keep, np.int64)


def paste_box_masks(
    masks: np.ndarray, boxes: np.ndarray, size: tuple[int, int], padding: int = 1
) -> np.ndarray:
    """Box-relative ``(N, M, M)`` masks pasted into an ``(H, W)`` image: the numpy form of
    :func:`dmm_deploy.model.paste_box_masks` (Mask R-CNN's legacy paste). float32."""
    n, m = masks.shape[0], masks.shape[-1]
    h_img, w_img = size
    out = np.zeros((n, h_img, w_img), np.float32)
    if n == 0:
        return out
    padded = np.pad(masks.astype(np.float32), ((0, 0), (padding, padding), (padding, padding)))
    scale = np.float32((m + 2 * padding) / m)
    boxes = boxes.astype(np.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) * np.float32(0.5)
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * scale
    grown = np.concatenate([centre - half, centre + half], axis=1).astype(np.int32)
    for k, (x1, y1, x2, y2) in enumerate(grown.tolist()):
        w = max(x2 - x1 + 1, 1)
        h = max(y2 - y1 + 1, 1)
        xa, xb = max(x1, 0), min(x2 + 1, w_img)
        ya, yb = max(y1, 0), min(y2 + 1, h_img)
        if xa >= xb or ya >= yb:
            continue
        resized = resize(padded[k], (h, w), "bilinear")
        out[k, ya:yb, xa:xb] = resized[ya - y1 : yb - y1, xa - x1 : xb - x1]
    return out


def merge_probabilities(probs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` probabilities and ``(K,)`` uint8 ids -> ``(H, W)`` label map: background
    ``1 - max_k p_k``, argmax over ``[background, p_1..p_K]`` (first on ties)."""
    if probs.shape[0] == 0:
        return np.zeros(probs.shape[1:], np.uint8)
    background = np.float32(1.0) - probs.max(axis=0, keepdims=True)
    winner = np.concatenate([background, probs], axis=0).argmax(axis=0)
    table = np.concatenate([np.zeros(1, np.uint8), ids.astype(np.uint8)])
    return table[winner]
