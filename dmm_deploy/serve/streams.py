"""Per-stream state for a server: many videos over one :class:`~dmm_deploy.runtime.Runtime`.

:class:`StreamTable` keeps one :class:`~dmm_deploy.runtime.StreamState` per stream id, checks
every request on its own (a bad request gets its own error and changes nothing else),
expires streams idle for longer than ``idle_timeout`` seconds, refuses new streams beyond
``max_streams``, and runs the frames of different streams that arrive together as one
:func:`~dmm_deploy.runtime.step_streams` call (one encoder batch, one padded matcher call).
No Triton here: the server's model (:mod:`dmm_deploy.serve.triton_model`) turns its requests
into :class:`FrameRequest` and the results back into responses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dmm_deploy.runtime import Detections, Runtime, StreamState, step_streams

__all__ = ["FrameRequest", "RequestDetections", "ServeStats", "StreamError", "StreamTable"]


class StreamError(ValueError):
    """A request that cannot be served; the message is one line for the client."""


@dataclass
class FrameRequest:
    """One frame of one stream.

    frame: ``(H, W, 3)`` uint8 RGB. annotation: ``(H, W)`` uint8 label map (new or
    re-annotated objects; required with ``start``) or None. start: begin (or restart) the
    stream; end: forget the stream after this frame. detections: this frame's detections
    (required when the bundle has no proposals stage; ignored otherwise).
    """

    stream_id: str
    frame: np.ndarray
    annotation: np.ndarray | None = None
    start: bool = False
    end: bool = False
    detections: Detections | None = None


class RequestDetections:
    """A proposal source fed by the requests: ``detect`` returns the frame's detections that
    the last request of the stream carried (a detector that runs elsewhere)."""

    def __init__(self) -> None:
        self.current: Detections | None = None

    def detect(self, index: int, frame: np.ndarray) -> Detections:
        if self.current is None:
            raise StreamError(f"frame {index}: no detections were sent with it")
        det, self.current = self.current, None
        return det


@dataclass
class _Stream:
    state: StreamState
    size: tuple[int, int]
    last_seen: float


@dataclass
class ServeStats:
    """Counters since the table was made: frames answered, ``step_streams`` calls, frames
    that shared their call with another stream, errors, streams started/ended/expired."""

    frames: int = 0
    calls: int = 0
    batched_frames: int = 0
    errors: int = 0
    started: int = 0
    ended: int = 0
    expired: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class StreamTable:
    """Stream id -> state over one runtime; thread-safe (one lock around all of it).

    Args:
        runtime: the opened bundle.
        max_streams: most live streams; a ``start`` of a new stream beyond it is refused.
        idle_timeout: seconds without a request after which a stream's state is dropped.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        runtime: Runtime,
        max_streams: int = 64,
        idle_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout}")
        self.runtime = runtime
        self.max_streams = int(max_streams)
        self.idle_timeout = float(idle_timeout)
        self.clock = clock
        self.stats = ServeStats()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._detector = runtime.proposal_source() if "proposals" in runtime.runners else None

    @property
    def needs_detections(self) -> bool:
        """True when requests must carry their frame's detections (no proposals stage)."""
        return self._detector is None

    def live(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def expire(self, now: float | None = None) -> list[str]:
        """Drop streams idle for longer than ``idle_timeout``; their ids."""
        with self._lock:
            return self._expire(self.clock() if now is None else now)

    def _expire(self, now: float) -> list[str]:
        gone = [k for k, s in self._streams.items() if now - s.last_seen > self.idle_timeout]
        for k in gone:
            del self._streams[k]
        self.stats.expired += len(gone)
        return gone

    def process(self, requests: list[FrameRequest]) -> list[np.ndarray | StreamError]:
        """Serve ``requests`` (at most one per stream is batched per call; repeats of a stream
        run in order in later calls). One result per request: its label map or its error."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            results: list[np.ndarray | StreamError | None] = [None] * len(requests)
            pending = list(range(len(requests)))
            while pending:
                seen: set[str] = set()
                group, later = [], []
                for i in pending:
                    sid = requests[i].stream_id
                    (later if sid in seen else group).append(i)
                    seen.add(sid)
                self._run(requests, group, results, now)
                pending = later
            return results  # type: ignore[return-value]

    def _run(self, requests, group: list[int], results: list, now: float) -> None:
        ready: list[tuple[int, _Stream, np.ndarray | None]] = []
        for i in group:
            try:
                ready.append((i, *self._admit(requests[i], now)))
            except StreamError as e:
                results[i] = e
                self.stats.errors += 1
        if not ready:
            return
        streams = [s.state for _, s, _ in ready]
        images = [requests[i].frame for i, _, _ in ready]
        anns = [a for _, _, a in ready]
        try:
            labels = step_streams(self.runtime, streams, images, anns)
        except Exception as e:  # a bug or a backend failure: these streams' states are unknown
            for i, _, _ in ready:
                self._streams.pop(requests[i].stream_id, None)
                results[i] = StreamError(
                    f"stream {requests[i].stream_id!r} failed and was reset "
                    f"(start it again): {type(e).__name__}: {e}"
                )
            self.stats.errors += len(ready)
            return
        n = len(ready)
        self.stats.calls += 1
        self.stats.frames += n
        self.stats.batched_frames += n if n > 1 else 0
        self.stats.batch_sizes[n] = self.stats.batch_sizes.get(n, 0) + 1
        for (i, s, _), lab in zip(ready, labels, strict=True):
            results[i] = lab
            s.last_seen = now
            if requests[i].end:
                self._streams.pop(requests[i].stream_id, None)
                self.stats.ended += 1

    def _admit(self, req: FrameRequest, now: float) -> tuple[_Stream, np.ndarray | None]:
        """Check one request; the stream it runs on (made on ``start``) and its annotation."""
        sid = req.stream_id
        if not isinstance(sid, str) or not sid:
            raise StreamError("stream id must be a non-empty string")
        f = req.frame
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            got = f"{f.dtype} {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
            raise StreamError(f"stream {sid!r}: frame must be (H, W, 3) uint8 RGB, got {got}")
        size = (int(f.shape[0]), int(f.shape[1]))
        if min(size) < 1:
            raise StreamError(f"stream {sid!r}: empty frame {size}")
        ann = req.annotation
        if ann is not None and (
            not isinstance(ann, np.ndarray) or ann.dtype != np.uint8 or ann.shape != size
        ):
            got = f"{ann.dtype} {ann.shape}" if isinstance(ann, np.ndarray) else type(ann)
            raise StreamError(
                f"stream {sid!r}: annotation must be a ({size[0]}, {size[1]}) uint8 label "
                f"map like its frame, got {got}"
            )
        det = self._check_detections(sid, req.detections, size)
        s = self._streams.get(sid)
        if req.start:
            if ann is None:
                raise StreamError(f"stream {sid!r}: the start frame needs an annotation")
            if s is None and len(self._streams) >= self.max_streams:
                raise StreamError(
                    f"stream {sid!r} refused: the server holds its maximum of "
                    f"{self.max_streams} streams (end one, or wait {self.idle_timeout:g} s "
                    "for an idle one to expire)"
                )
            source = self._detector if self._detector is not None else RequestDetections()
            s = _Stream(StreamState(source), size, now)
            if sid not in self._streams:
                self.stats.started += 1
            self._streams[sid] = s
        elif s is None:
            raise StreamError(
                f"stream {sid!r} is unknown (never started, ended, or expired after "
                f"{self.idle_timeout:g} s idle): send its first frame with start"
            )
        elif s.size != size:
            raise StreamError(
                f"stream {sid!r}: frame size changed from {s.size[1]}x{s.size[0]} to "
                f"{size[1]}x{size[0]} (start a new stream for a new size)"
            )
        if isinstance(s.state.source, RequestDetections):
            s.state.source.current = det
        return s, ann

    def _check_detections(self, sid: str, det: Detections | None, size) -> Detections | None:
        if self._detector is not None:
            return None
        if det is None:
            raise StreamError(
                f"stream {sid!r}: this bundle has no proposals stage; send the frame's "
                "detections (boxes, scores, masks) with it"
            )
        b, s, m = det.boxes, det.scores, det.masks
        n = len(b) if isinstance(b, np.ndarray) else -1
        if not (
            isinstance(b, np.ndarray)
            and isinstance(s, np.ndarray)
            and isinstance(m, np.ndarray)
            and b.shape == (n, 4)
            and s.shape == (n,)
            and m.ndim == 3
            and m.shape[0] == n
            and min(m.shape[1:]) >= 1
        ):
            raise StreamError(
                f"stream {sid!r}: detections must be boxes (N, 4), scores (N,), masks (N, h, w)"
            )
        if not (np.isfinite(b).all() and np.isfinite(s).all() and np.isfinite(m).all()):
            raise StreamError(f"stream {sid!r}: detections hold NaN or infinite values")
        kind = "frame" if tuple(m.shape[1:]) == size else "box"
        return Detections(b.astype(np.float32), s.astype(np.float32), m.astype(np.float32), kind)
