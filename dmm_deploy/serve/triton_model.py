"""The segmentation model inside Triton Inference Server's Python backend.

Loaded by the backend's stub through the repository's ``1/model.py`` shim (which re-exports
:class:`TritonPythonModel`); importable only there (``triton_python_backend_utils``). The model
is served with the **sequence batcher** (``oldest`` strategy): Triton keeps a stream's requests
in order and on this one instance, and puts requests of *different* streams that arrive
together into one ``execute`` call, which runs them as one batched step
(:class:`~dmm_deploy.serve.streams.StreamTable`).

Stages run either in this process on onnxruntime (``stages: "local"``, what ``dmm-deploy
serve`` writes) or as other models of the same server called through BLS (``stages: "bls"``,
what ``dmm-deploy triton-repo`` writes for a GPU server: TensorRT-plan or onnxruntime models
with their own dynamic batching).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from dmm_deploy.runtime import Bundle, Detections, Runtime
from dmm_deploy.serve.protocol import (
    ANNOTATION,
    DET_BOXES,
    DET_MASKS,
    DET_SCORES,
    END,
    FRAME,
    LABELS,
    START,
)
from dmm_deploy.serve.streams import FrameRequest, StreamError, StreamTable

__all__ = ["BLSRunner", "TritonPythonModel"]


class BLSRunner:
    """A stage runner (``run(feeds) -> outputs``, numpy in and out) that calls another model
    of the same server through BLS, so :func:`~dmm_deploy.runtime.step_streams` runs unchanged
    over TensorRT-plan or onnxruntime models."""

    def __init__(self, model_name: str, outputs: list[str]) -> None:
        self.model_name = model_name
        self.outputs = outputs

    def run(self, feeds: dict) -> dict:
        req = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=self.outputs,
            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()],
        )
        resp = req.exec()
        if resp.has_error():
            raise RuntimeError(f"model {self.model_name}: {resp.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(resp, n).as_numpy() for n in self.outputs}


def _param(cfg: dict, name: str, default: str | None = None) -> str:
    p = cfg.get("parameters", {}).get(name)
    if p is None:
        if default is None:
            raise pb_utils.TritonModelException(f"model parameter {name!r} is missing")
        return default
    return str(p["string_value"])


def _optional(request, name: str) -> np.ndarray | None:
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def _one(x: np.ndarray | None, name: str) -> np.ndarray | None:
    """Drop the batch axis of a one-frame request."""
    if x is None:
        return None
    if x.shape[0] != 1:
        raise StreamError(f"{name}: one frame per request (batch axis 1), got {x.shape[0]}")
    return x[0]


class TritonPythonModel:
    """Per-stream segmentation; see the module docstring."""

    def initialize(self, args: dict) -> None:
        cfg = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        bundle_dir = Path(_param(cfg, "bundle", str(version_dir / "bundle")))
        if not bundle_dir.is_absolute():
            bundle_dir = version_dir / bundle_dir
        stages = _param(cfg, "stages", "local")
        if stages == "local":
            threads = int(_param(cfg, "threads", "0")) or None
            rt = Runtime.open(
                bundle_dir,
                _param(cfg, "backend", "onnxruntime"),
                _param(cfg, "device", "cpu"),
                threads=threads,
            )
        elif stages == "bls":
            bundle = Bundle.load(bundle_dir, verify=False)
            names = json.loads(_param(cfg, "stage_models"))
            runners = {
                s: BLSRunner(names[s], [t.name for t in bundle.stages[s].outputs])
                for s in bundle.stages
            }
            rt = Runtime(bundle, runners, "triton-bls", "server")
        else:
            raise pb_utils.TritonModelException(f"parameter stages must be local|bls: {stages}")
        self.table = StreamTable(
            rt,
            max_streams=int(_param(cfg, "max_streams", "64")),
            idle_timeout=float(_param(cfg, "idle_timeout", "30")),
        )
        self._metrics()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="dmm-expiry", daemon=True)
        self._sweeper.start()

    def _metrics(self) -> None:
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        fam = {
            "frames": (counter, "frames segmented"),
            "batched_frames": (counter, "frames that ran in one step with other streams"),
            "calls": (counter, "batched steps (encoder/matcher calls over several streams)"),
            "errors": (counter, "requests answered with an error"),
            "expired": (counter, "streams dropped after the idle timeout"),
            "streams": (gauge, "live streams"),
        }
        # the families must outlive their metrics: keep both
        self._families = {
            k: pb_utils.MetricFamily(name=f"dmm_serve_{k}", description=d, kind=kind)
            for k, (kind, d) in fam.items()
        }
        self._m = {k: f.Metric(labels={}) for k, f in self._families.items()}
        self._seen = {k: 0 for k in fam if k != "streams"}

    def _publish(self) -> None:
        s = self.table.stats
        for k in self._seen:
            v = getattr(s, k)
            if v > self._seen[k]:
                self._m[k].increment(v - self._seen[k])
                self._seen[k] = v
        self._m["streams"].set(len(self.table.live()))

    def _sweep(self) -> None:
        period = min(1.0, self.table.idle_timeout / 4)
        while not self._stop.wait(period):
            if self.table.expire():
                self._publish()

    def execute(self, requests: list) -> list:
        parsed: list[FrameRequest | StreamError] = []
        for r in requests:
            try:
                parsed.append(self._parse(r))
            except StreamError as e:
                parsed.append(e)
        valid = [p for p in parsed if isinstance(p, FrameRequest)]
        results = iter(self.table.process(valid))
        out = []
        for p in parsed:
            res = p if isinstance(p, StreamError) else next(results)
            if isinstance(res, StreamError):
                if p is res:
                    self.table.stats.errors += 1
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(res))))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor(LABELS, res[None])]))
        self._publish()
        return out

    def _parse(self, r) -> FrameRequest:
        sid = r.correlation_id()
        sid = sid.decode() if isinstance(sid, bytes) else str(sid)
        if sid in ("", "0"):
            raise StreamError("no stream id: send the request with a sequence id")
        start = _one(_optional(r, START), START)
        end = _one(_optional(r, END), END)
        frame = _one(_optional(r, FRAME), FRAME)
        boxes = _one(_optional(r, DET_BOXES), DET_BOXES)
        scores = _one(_optional(r, DET_SCORES), DET_SCORES)
        masks = _one(_optional(r, DET_MASKS), DET_MASKS)
        det = None
        if boxes is not None or scores is not None or masks is not None:
            if boxes is None or scores is None or masks is None:
                raise StreamError(
                    f"stream {sid!r}: send {DET_BOXES}, {DET_SCORES} and {DET_MASKS} together"
                )
            det = Detections(boxes, scores, masks)
        return FrameRequest(
            stream_id=sid,
            frame=frame,
            annotation=_one(_optional(r, ANNOTATION), ANNOTATION),
            start=bool(start is not None and start.reshape(-1)[0]),
            end=bool(end is not None and end.reshape(-1)[0]),
            detections=det,
        )

    def finalize(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)
