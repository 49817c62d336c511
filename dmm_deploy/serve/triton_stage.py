"""One stateless bundle stage as a Python-backend model (``triton-repo --platform python``).

Runs the stage on onnxruntime's CPU provider through the runtime's own stage runner, so a
``triton-repo`` repository (stream model + stage models over BLS) runs on a CPU-only server.
On a GPU server the stages are ``onnxruntime`` or ``tensorrt_plan`` models instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from dmm_deploy.runtime import Bundle
from dmm_deploy.runtime.backends import open_stage

__all__ = ["TritonPythonModel"]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        bundle = Bundle.load(version_dir / params["bundle"])
        self.stage = params["stage"]
        spec = bundle.stages[self.stage]
        self.inputs = [t.name for t in spec.inputs]
        self.runner = open_stage(
            bundle, self.stage, "onnxruntime", "cpu", threads=None, trt_ep=False
        )

    def execute(self, requests: list) -> list:
        out = []
        for r in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
            try:
                res = self.runner.run(feeds)
            except Exception as e:  # the caller (BLS) gets the stage's error
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
                continue
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in res.items()]))
        return out
