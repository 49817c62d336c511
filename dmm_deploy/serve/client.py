"""Client side: :class:`SegmentationClient` (tritonclient, HTTP or gRPC) and the
``dmm-deploy client`` job (a video through the server into a folder of label-map PNGs)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from dmm_deploy.serve.protocol import (
    ANNOTATION,
    DET_BOXES,
    DET_MASKS,
    DET_SCORES,
    FRAME,
    LABELS,
    MODEL_NAME,
)

__all__ = ["PROTOCOLS", "SegmentationClient", "ServerError"]

PROTOCOLS = ("grpc", "http")


class ServerError(RuntimeError):
    """The server answered a request with an error (message: the server's one line)."""


def _client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as m
    elif protocol == "http":
        import tritonclient.http as m
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return m


class SegmentationClient:
    """Segment video streams on a ``dmm-deploy serve`` (or ``triton-repo``) server.

    Args:
        url: ``host:port`` of the server's gRPC (default) or HTTP endpoint.
        protocol: ``"grpc"`` or ``"http"``.
        model: the per-stream model's name.
        timeout: seconds per request (gRPC: client timeout; HTTP: network timeout).

    One client object per thread (tritonclient's clients are not shared across threads).

    Usage::

        with SegmentationClient("localhost:8001") as c:
            for labels in c.segment("cam-1", frames, mask0, detections=source): ...
    """

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        model: str = MODEL_NAME,
        timeout: float = 120.0,
    ) -> None:
        self._m = _client_module(protocol)
        self._exc = __import__("tritonclient.utils", fromlist=["InferenceServerException"])
        self.protocol, self.model, self.timeout = protocol, model, float(timeout)
        if protocol == "http":
            self._c = self._m.InferenceServerClient(
                url, network_timeout=self.timeout, connection_timeout=self.timeout
            )
        else:
            self._c = self._m.InferenceServerClient(url)

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self) -> bool:
        """True when the server and the model are ready."""
        try:
            return bool(self._c.is_server_ready() and self._c.is_model_ready(self.model))
        except (self._exc.InferenceServerException, OSError):
            return False

    def _input(self, name: str, x: np.ndarray, dtype: str):
        t = self._m.InferInput(name, [1, *x.shape], dtype)
        t.set_data_from_numpy(x[None])
        return t

    def infer(
        self,
        stream_id: str,
        frame: np.ndarray,
        annotation: np.ndarray | None = None,
        *,
        start: bool = False,
        end: bool = False,
        detections=None,
    ) -> np.ndarray:
        """One frame of stream ``stream_id``; its ``(H, W)`` uint8 label map.

        detections: a :class:`~dmm_deploy.runtime.Detections` (boxes, scores, masks) of this
        frame, for a server whose bundle has no proposals stage. Raises :class:`ServerError`
        with the server's message when the request is refused.
        """
        frame = np.asarray(frame)
        inputs = [self._input(FRAME, frame, _dtype(frame))]
        if annotation is not None:
            ann = np.asarray(annotation)
            inputs.append(self._input(ANNOTATION, ann, _dtype(ann)))
        if detections is not None:
            for name, x in zip((DET_BOXES, DET_SCORES, DET_MASKS), detections[:3], strict=True):
                inputs.append(self._input(name, np.asarray(x, np.float32), "FP32"))
        kw = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            res = self._c.infer(
                self.model,
                inputs,
                outputs=[self._m.InferRequestedOutput(LABELS)],
                sequence_id=str(stream_id),
                sequence_start=bool(start),
                sequence_end=bool(end),
                **kw,
            )
        except self._exc.InferenceServerException as e:
            raise ServerError(e.message() or str(e)) from None
        return res.as_numpy(LABELS)[0]

    def segment(
        self,
        stream_id: str,
        frames: Iterable[np.ndarray],
        first_mask: np.ndarray,
        annotations: Mapping[int, np.ndarray] | None = None,
        detections=None,
        num_frames: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Segment a video as stream ``stream_id`` (lazily, one label map per frame).

        detections: a proposal source (``detect(index, frame) -> Detections``, e.g.
        :class:`~dmm_deploy.runtime.PrecomputedDetections`) for servers that need them.
        num_frames: when given, the last frame ends the stream (else it expires when idle).
        """
        annotations = dict(annotations or {})
        for i, frame in enumerate(frames):
            det = None if detections is None else detections.detect(i, frame)
            ann = first_mask if i == 0 else annotations.get(i)
            last = num_frames is not None and i == num_frames - 1
            yield self.infer(stream_id, frame, ann, start=i == 0, end=last, detections=det)


def _dtype(x: np.ndarray) -> str:
    """Triton's name of ``x``'s dtype (the server checks it against the model's)."""
    from tritonclient.utils import np_to_triton_dtype

    name = np_to_triton_dtype(x.dtype)
    if name is None:
        raise ValueError(f"arrays of dtype {x.dtype} cannot be sent")
    return name


def run_client_job(
    url: str,
    frames_dir: str | os.PathLike,
    mask: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    protocol: str = "grpc",
    stream_id: str | None = None,
    precomputed: str | os.PathLike | None = None,
    model: str = MODEL_NAME,
    max_frames: int | None = None,
    log=print,
) -> int:
    """Segment the frames of ``frames_dir`` through the server into ``out_dir`` (palette PNGs
    named like the frames); the number of frames written."""
    import time
    import uuid
    from pathlib import Path

    from dmm_deploy.data import read_frame, read_mask, write_mask
    from dmm_deploy.data.davis import list_images

    paths = list_images(frames_dir)
    if not paths:
        raise FileNotFoundError(f"--frames: no images in {frames_dir}")
    if max_frames is not None:
        paths = paths[:max_frames]
    first = read_frame(paths[0])
    mask0 = read_mask(mask, expected_size=first.shape[:2])
    source = None
    if precomputed is not None:
        from dmm_deploy.runtime import PrecomputedDetections

        source = PrecomputedDetections(precomputed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sid = stream_id or f"client-{uuid.uuid4().hex[:12]}"
    t0 = time.perf_counter()
    with SegmentationClient(url, protocol, model) as c:
        if not c.ready():
            raise RuntimeError(f"--url: no ready model {model!r} at {url} ({protocol})")
        frames = (first if i == 0 else read_frame(p) for i, p in enumerate(paths))
        labels = c.segment(sid, frames, mask0, detections=source, num_frames=len(paths))
        for n, (p, lab) in enumerate(zip(paths, labels, strict=True), 1):
            write_mask(out / f"{p.stem}.png", lab)
            if log is not None and (n % 10 == 0 or n == len(paths)):
                dt = time.perf_counter() - t0
                log(f"client: {n}/{len(paths)} frames, {n / dt:.2f} frames/s")
    return len(paths)
