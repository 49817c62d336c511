"""Entry points for command-line jobs over a bundle (torch-free)."""

from __future__ import annotations

from pathlib import Path

from dmm_deploy.runtime.pipeline import Runtime, StreamingSegmenter

__all__ = ["build_segmenter"]


def build_segmenter(opts) -> StreamingSegmenter:
    """A :class:`StreamingSegmenter` from command-line options.

    Reads ``opts.bundle`` (folder), ``opts.backend`` (``"onnxruntime"`` | ``"tensorrt"``),
    ``opts.device`` (``"cpu"`` | ``"cuda"``), ``opts.proposals`` (``"maskrcnn"`` |
    ``"precomputed"``) with ``opts.precomputed`` (``.npz`` path or None) and ``opts.threads``
    (int or None); optional ``opts.trt_ep`` (onnxruntime's TensorRT provider on CUDA).
    Raises ``ValueError`` / ``FileNotFoundError`` / ``RuntimeError`` with one line.
    """
    bundle = getattr(opts, "bundle", None)
    if bundle is None:
        raise ValueError("--bundle: a bundle folder is required")
    backend = getattr(opts, "backend", None) or "onnxruntime"
    device = getattr(opts, "device", None) or "cpu"
    kind = getattr(opts, "proposals", None) or "precomputed"
    precomputed = getattr(opts, "precomputed", None)
    if kind not in ("maskrcnn", "precomputed"):
        raise ValueError(f"--proposals must be 'maskrcnn' or 'precomputed', got {kind!r}")
    if kind == "precomputed":
        if precomputed is None:
            raise ValueError(
                "--precomputed: a .npz of detections is required with --proposals precomputed"
            )
        if not Path(precomputed).is_file():
            raise FileNotFoundError(f"--precomputed: file not found: {precomputed}")
    rt = Runtime.open(
        Path(bundle),
        backend,
        device,
        threads=getattr(opts, "threads", None),
        trt_ep=bool(getattr(opts, "trt_ep", False)),
    )
    source = rt.proposal_source(precomputed if kind == "precomputed" else None)
    return StreamingSegmenter(rt, source)
