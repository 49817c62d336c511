"""Client side: :class:`SegmentationClient` (tritonclient, HTTP or gRPC) and the
``dmm-deploy client`` job (a video through the server into a folder of label-map PNGs)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

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
    """``tritonclient.grpc`` or ``tritonclient.http``; ``ImportError`` naming the ``serve``
    extra when it is not installed."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    try:
        if protocol == "grpc":
            import tritonclient.grpc as m
        else:
            import tritonclient.http as m
        import tritonclient.utils  # noqa: F401
    except (ImportError, RuntimeError) as e:  # tritonclient without that extra: RuntimeError
        from dmm_deploy.serve.repository import SERVE_EXTRA

        name = getattr(e, "name", None)
        detail = f"no module {name}" if name else f"tritonclient without its {protocol} support"
        raise ImportError(
            f"the client needs tritonclient[{protocol}] ({detail}): install the serve extra: "
            f"{SERVE_EXTRA}"
        ) from e
    return m


def _reason(e: BaseException) -> str:
    """The end of a connection error's text, e.g. ``Connection refused``."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    text = " ".join((text or type(e).__name__).split())
    return text.rsplit(": ", 1)[-1].strip(" []") or text


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
        self.url, self.protocol, self.model, self.timeout = url, protocol, model, float(timeout)
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
        return self.readiness() is None

    def readiness(self) -> str | None:
        """None when the server and the model are ready; else why not, one line that tells
        nothing answering at the address from a server without the model ready."""
        where = f"{self.url} ({self.protocol})"
        kw = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            live = self._c.is_server_live(**kw)
        except (self._exc.InferenceServerException, OSError) as e:
            other = "http" if self.protocol == "grpc" else "grpc"
            return (
                f"no server answered at {where}: {_reason(e)} (is the server running, and is "
                f"this its {self.protocol} port? the other one needs --protocol {other})"
            )
        if not live:
            return f"what answered at {where} is not a live inference server"
        try:
            if not self._c.is_server_ready(**kw):
                return f"the server at {where} is not ready (still loading its models?)"
            ready, why = self._c.is_model_ready(self.model, **kw), ""
        except (self._exc.InferenceServerException, OSError) as e:
            ready, why = False, f": {_reason(e)}"
        if not ready:
            return (
                f"a server answers at {where}, but its model {self.model!r} is not ready{why} "
                "(still loading, failed to load, or another --model)"
            )
        return None

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
    overwrite: bool = False,
    log=print,
) -> int:
    """Segment the frames of ``frames_dir`` through the server into ``out_dir`` (palette PNGs
    named like the frames); the number of frames written.

    ``out_dir`` is guarded as ``dmm-deploy segment`` guards its ``--out`` (see
    :class:`~dmm_deploy.data.output.ResultFolder`): not the frames' folder, not holding an
    input, new or empty unless ``overwrite`` (which replaces only masks this tool wrote); it
    is created only after the inputs were read and the server's model found ready. A run
    that stops early leaves the folder marked partial.

    Raises:
        ValueError / FileNotFoundError: bad input, or no ready model at ``url`` (one line).
        ImportError: tritonclient (the ``serve`` extra) is not installed.
        ServerError: the server refused a frame (its message, the frame, what was written).
    """
    import time
    import uuid

    from dmm_deploy.data import read_frame, read_mask
    from dmm_deploy.data.davis import list_images
    from dmm_deploy.data.output import ResultFolder

    frames_dir, mask, out = Path(frames_dir), Path(mask), Path(out_dir)
    precomputed = None if precomputed is None else Path(precomputed)
    inputs = [("--frames", frames_dir), ("--mask", mask), ("--precomputed", precomputed)]
    if _same_path(frames_dir, out):
        raise ValueError(f"--out {out} is the --frames folder; expected another folder")
    for name, path in inputs:
        if path is not None and _same_path(out, *path.resolve().parents):
            kind = "folder" if name == "--frames" else "file"
            raise ValueError(f"--out {out} holds the {name} {kind} {path}; choose another folder")
    settings = {
        "url": url,
        "protocol": protocol,
        "model": model,
        "frames": str(frames_dir.resolve()),
        "mask": str(mask.resolve()),
        "precomputed": None if precomputed is None else str(precomputed.resolve()),
        "max_frames": max_frames,
    }
    folder = ResultFolder(out, settings, overwrite=overwrite, arg="--out")
    try:
        folder.check()
    except ValueError as e:  # this command has no --resume
        raise ValueError(str(e).replace(", --resume to continue it", "")) from None
    paths = list_images(frames_dir)
    if not paths:
        raise FileNotFoundError(f"--frames: no images in {frames_dir}")
    if max_frames is not None:
        paths = paths[:max_frames]
    first = read_frame(paths[0])
    mask0 = read_mask(mask, expected_size=first.shape[:2])
    if not ((mask0 > 0) & (mask0 < 255)).any():
        raise ValueError(
            f"--mask {mask} holds no object (only background 0 and void 255); expected object "
            "ids in 1..254 on the first frame"
        )
    source = None
    if precomputed is not None:
        from dmm_deploy.runtime import PrecomputedDetections

        source = PrecomputedDetections(precomputed)
    sid = stream_id or f"client-{uuid.uuid4().hex[:12]}"
    total = len(paths)
    with SegmentationClient(url, protocol, model) as c:
        why = c.readiness()
        if why is not None:
            raise ValueError(f"--url: {why}")
        folder.open(total)  # created (when new) only now: inputs read, server ready
        try:
            t0 = time.perf_counter()
            frames = (first if i == 0 else read_frame(p) for i, p in enumerate(paths))
            labels = c.segment(sid, frames, mask0, detections=source, num_frames=total)
            for n, (p, lab) in enumerate(zip(paths, labels, strict=True), 1):
                folder.write_mask(p.stem, lab)
                if log is not None and (n % 10 == 0 or n == total):
                    dt = time.perf_counter() - t0
                    log(f"client: {n}/{total} frames, {n / dt:.2f} frames/s")
        except BaseException as e:
            done = folder.written
            stop = "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped"
            if folder.stop(f"{stop} after {done} of {total} frames: {e}"):
                where = f"{out} is marked partial; rerun with --overwrite"
            else:
                where = "nothing written"
            if isinstance(e, KeyboardInterrupt):
                raise KeyboardInterrupt(
                    f"interrupted after {done} of {total} frames ({where})"
                ) from None
            if isinstance(e, ServerError):
                name = paths[min(done, total - 1)].name
                raise ServerError(
                    f"the server refused frame {name} ({done + 1} of {total}): {e} ({where})"
                ) from None
            raise
    folder.finish()
    return total


def _same_path(a: Path, *others: Path) -> bool:
    """Whether ``a`` is the same path as one of ``others`` (links resolved)."""
    try:
        return a.resolve() in {o.resolve() for o in others}
    except OSError:
        return False
