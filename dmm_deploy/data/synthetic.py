"""Synthetic videos with exact ground truth, for tests: moving textured shapes.

:func:`make_synthetic_video` draws ``num_objects`` textured shapes (ellipses, rectangles,
diamonds) over a patterned, noisy background. By default two objects cross paths in the middle
band of the image, the second passing IN FRONT of the first (depth order), other objects move
and bounce off the borders, and the last ``late_objects`` objects enter at later frames from the
left/right border. Everything is drawn from one seeded generator, so a seed gives the same
video on every machine. Layouts where an object would be hidden too much (less than
``min_visible`` of its in-image area) at some frame after its first appearance are redrawn.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SHAPES", "SyntheticVideo", "make_synthetic_video"]

SHAPES = ("ellipse", "rectangle", "diamond")


@dataclass(frozen=True)
class SyntheticVideo:
    """A synthetic clip and its ground truth.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB frames.
        labels: ``(T, H, W)`` uint8 ground-truth label maps (0 background, objects 1..N).
        first_appearance: object id -> index of the first frame where it is visible.
        depth_order: object ids from back to front.
    """

    frames: np.ndarray
    labels: np.ndarray
    first_appearance: dict[int, int]
    depth_order: tuple[int, ...]

    @property
    def object_ids(self) -> list[int]:
        """The object ids, ascending."""
        return sorted(self.first_appearance)

    @property
    def first_mask(self) -> np.ndarray:
        """``(H, W)`` label map of frame 0 (the objects visible there)."""
        return self.annotation(0)

    def annotation(self, t: int) -> np.ndarray:
        """``(H, W)`` label map of frame ``t`` keeping only the objects that first appear there.

        This is a DAVIS-style first-appearance annotation (all zeros when no object is new).
        """
        if not 0 <= t < self.labels.shape[0]:
            raise ValueError(f"t must be in 0..{self.labels.shape[0] - 1}, got {t}")
        new = [k for k, t0 in self.first_appearance.items() if t0 == t]
        return np.where(np.isin(self.labels[t], new), self.labels[t], 0).astype(np.uint8)

    @property
    def annotations(self) -> dict[int, np.ndarray]:
        """Frame index -> first-appearance annotation, for the frames where objects appear."""
        return {t: self.annotation(t) for t in sorted(set(self.first_appearance.values()))}

    def write(self, directory: str | Path, ext: str = ".png") -> Path:
        """Write the clip in DAVIS layout under ``directory``.

        Creates ``frames/<t>{ext}`` (RGB images), ``labels/<t>.png`` (ground truth of every
        frame) and ``annotations/<t>.png`` (first-appearance annotations only), with names
        ``00000``, ``00001``, ... Returns ``directory`` as a ``Path``.
        """
        from dmm_deploy.data.davis import write_label_dir, write_mask
        from dmm_deploy.data.frames import write_frames

        directory = Path(directory)
        write_frames(directory / "frames", self.frames, ext=ext)
        write_label_dir(directory / "labels", self.labels)
        for t, ann in self.annotations.items():
            write_mask(directory / "annotations" / f"{t:05d}.png", ann)
        return directory


@dataclass
class _Obj:
    oid: int
    shape: str
    a: float  # half width
    b: float  # half height
    x0: float
    y0: float
    vx: float
    vy: float
    bounce: bool
    start: int  # first frame it is drawn
    color: np.ndarray  # (3,) float in 0..255
    freq: float
    theta: float
    phase: float

    def center(self, t: int, width: int, height: int) -> tuple[float, float]:
        dt = t - self.start
        x, y = self.x0 + self.vx * dt, self.y0 + self.vy * dt
        if self.bounce:
            x = _reflect(x, self.a, width - 1 - self.a)
            y = _reflect(y, self.b, height - 1 - self.b)
        return x, y


def _reflect(p: float, lo: float, hi: float) -> float:
    """Fold ``p`` into ``[lo, hi]`` as a ball bouncing between two walls."""
    span = hi - lo
    if span <= 0:
        return lo
    q = (p - lo) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    if shape == "ellipse":
        return dx * dx + dy * dy <= 1.0
    if shape == "rectangle":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 1.0
    return np.abs(dx) + np.abs(dy) <= 1.0  # diamond


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def make_synthetic_video(
    num_frames: int = 12,
    height: int = 96,
    width: int = 128,
    num_objects: int = 3,
    *,
    late_objects: int = 1,
    enter_frame: int | None = None,
    occlusion: bool = True,
    noise: float = 6.0,
    min_visible: float = 0.25,
    seed: int = 0,
) -> SyntheticVideo:
    """Draw a seeded synthetic video of moving textured shapes with exact ground truth.

    Args:
        num_frames: number of frames T (>= 2).
        height: frame height H in pixels (>= 32).
        width: frame width W in pixels (>= 32).
        num_objects: number of objects N (1..20), ids 1..N.
        late_objects: how many of the objects (the highest ids) enter after frame 0, from the
            left/right border, one every 2 frames from ``enter_frame`` on (0..N-1).
        enter_frame: frame where the first late object appears; default ``num_frames // 3``
            (at least 1).
        occlusion: objects 1 and 2 cross paths, object 2 in front of object 1, their paths
            crossing at mid-video (needs two objects present from frame 0).
        noise: standard deviation of the Gaussian pixel noise added to every frame.
        min_visible: every object must keep at least this fraction of its in-image area
            visible (not occluded) on every frame from its first appearance on; layouts that
            break this are redrawn (up to 100 times).
        seed: seed of the generator.

    Returns:
        A :class:`SyntheticVideo`.
    """
    t_n = _check_int("num_frames", num_frames, 2)
    h = _check_int("height", height, 32)
    w = _check_int("width", width, 32)
    n = _check_int("num_objects", num_objects, 1, 20)
    n_late = _check_int("late_objects", late_objects, 0, n - 1)
    if enter_frame is None:
        enter_frame = max(1, t_n // 3)
    if n_late:
        _check_int("enter_frame", enter_frame, 1, t_n - 1)
    if occlusion and n - n_late < 2:
        raise ValueError(
            "occlusion=True needs at least two objects present from frame 0 "
            f"(num_objects - late_objects >= 2), got {n} - {n_late}"
        )
    if not (isinstance(noise, int | float) and noise >= 0):
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    if not 0.0 <= min_visible < 1.0:
        raise ValueError(f"min_visible must be in [0, 1), got {min_visible}")

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = _background(rng, h, w)
    for _ in range(100):
        objs, order = _layout(rng, t_n, h, w, n, n_late, enter_frame, occlusion)
        labels, full = _render_labels(objs, order, t_n, h, w, xx, yy)
        if _visible_enough(labels, full, objs, min_visible):
            break
    else:
        raise ValueError(
            f"could not place {n} objects on a {w}x{h} frame keeping min_visible={min_visible}; "
            "use fewer objects, a larger frame or a smaller min_visible"
        )
    frames = _render_frames(rng, objs, order, labels, background, t_n, xx, yy, float(noise))
    first = {}
    for o in objs:
        seen = np.flatnonzero((labels == o.oid).any(axis=(1, 2)))
        first[o.oid] = int(seen[0])
    return SyntheticVideo(frames, labels, first, tuple(o.oid for o in order))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.empty((h, w, 3), dtype=np.float32)
    base = rng.uniform(70, 130, size=3)
    for c in range(3):
        fx, fy = rng.uniform(0.5, 3.0, size=2)
        ph = rng.uniform(0, 2 * np.pi)
        bg[..., c] = base[c] + 25 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + ph)
    return bg


def _layout(rng, t_n, h, w, n, n_late, enter_frame, occlusion):
    s = min(h, w)
    hues = (np.arange(n) / n + rng.uniform(0, 1)) % 1.0
    rng.shuffle(hues)
    objs: list[_Obj] = []
    for i in range(n):
        oid = i + 1
        shape = SHAPES[i % len(SHAPES)]
        a = s * rng.uniform(0.11, 0.17)
        b = a * rng.uniform(0.75, 1.25)
        color = np.array(colorsys.hsv_to_rgb(hues[i], rng.uniform(0.6, 0.9), 0.9)) * 255
        tex = dict(
            color=color,
            freq=rng.uniform(0.12, 0.3),
            theta=rng.uniform(0, np.pi),
            phase=rng.uniform(0, 2 * np.pi),
        )
        late_rank = i - (n - n_late)
        if occlusion and oid in (1, 2):
            # Crossing pair in the middle band: 1 goes right, 2 goes left, 2 is in front.
            span = 0.5 * w
            x0 = 0.25 * w if oid == 1 else 0.75 * w
            vx = (span / max(t_n - 1, 1)) * (1 if oid == 1 else -1)
            y0 = 0.5 * h + (0.0 if oid == 1 else 0.45 * (b + 0.12 * s)) * rng.choice([-1, 1])
            objs.append(_Obj(oid, shape, a, b, x0, y0, vx, 0.0, False, 0, **tex))
        elif late_rank >= 0:
            start = min(enter_frame + 2 * late_rank, t_n - 1)
            from_left = late_rank % 2 == 0
            x0 = 0.2 * a if from_left else w - 1 - 0.2 * a  # about 60% inside at entry
            speed = s * rng.uniform(0.03, 0.06)
            vx = speed if from_left else -speed
            y0 = rng.uniform(b, h - 1 - b)
            objs.append(_Obj(oid, shape, a, b, x0, y0, vx, 0.0, False, start, **tex))
        else:
            x0, y0 = rng.uniform(a, w - 1 - a), rng.uniform(b, h - 1 - b)
            ang = rng.uniform(0, 2 * np.pi)
            speed = s * rng.uniform(0.02, 0.05)
            objs.append(
                _Obj(
                    oid,
                    shape,
                    a,
                    b,
                    x0,
                    y0,
                    speed * np.cos(ang),
                    speed * np.sin(ang),
                    True,
                    0,
                    **tex,
                )
            )
    # Depth: random order, then the crossing pair's rule (2 directly in front of 1 or higher).
    order = [objs[i] for i in rng.permutation(n)]
    if occlusion:
        ids = [o.oid for o in order]
        i1, i2 = ids.index(1), ids.index(2)
        if i2 < i1:
            order[i1], order[i2] = order[i2], order[i1]
    return objs, order


def _object_mask(o: _Obj, t: int, w: int, h: int, xx, yy):
    cx, cy = o.center(t, w, h)
    dx, dy = (xx - cx) / o.a, (yy - cy) / o.b
    return _shape_mask(o.shape, dx, dy), cx, cy


def _render_labels(objs, order, t_n, h, w, xx, yy):
    labels = np.zeros((t_n, h, w), dtype=np.uint8)
    full = np.zeros((t_n, len(objs)), dtype=np.int64)  # in-image area, unoccluded
    for t in range(t_n):
        for o in order:  # back to front
            if t < o.start:
                continue
            m, _, _ = _object_mask(o, t, w, h, xx, yy)
            labels[t][m] = o.oid
            full[t, o.oid - 1] = int(m.sum())
    return labels, full


def _visible_enough(labels, full, objs, min_visible) -> bool:
    for o in objs:
        vis = (labels[o.start :] == o.oid).sum(axis=(1, 2))
        area = full[o.start :, o.oid - 1]
        if (area < 12).any() or vis[0] == 0 or (vis < min_visible * area).any():
            return False
    return True


def _render_frames(rng, objs, order, labels, background, t_n, xx, yy, noise):
    h, w = labels.shape[1:]
    frames = np.empty((t_n, h, w, 3), dtype=np.uint8)
    for t in range(t_n):
        img = background.copy()
        for o in order:
            m = labels[t] == o.oid
            if not m.any():
                continue
            cx, cy = o.center(t, w, h)
            u = (xx[m] - cx) * np.cos(o.theta) + (yy[m] - cy) * np.sin(o.theta)
            v = -(xx[m] - cx) * np.sin(o.theta) + (yy[m] - cy) * np.cos(o.theta)
            stripes = np.sin(2 * np.pi * o.freq * u + o.phase)
            spots = np.cos(2 * np.pi * 0.5 * o.freq * v)
            shade = 1.0 + 0.22 * stripes + 0.1 * spots
            img[m] = np.clip(o.color[None, :] * shade[:, None], 0, 255)
        if noise > 0:
            img = img + rng.normal(0.0, noise, size=img.shape).astype(np.float32)
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames
