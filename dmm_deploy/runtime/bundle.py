"""The model bundle: a folder of stage graphs and ``manifest.json``, read and verified.

``manifest.json`` (``version`` 1)::

    {
      "format": "dmm-deploy-bundle", "version": 1,
      "config": {...every DMMConfig field...},
      "input_size": [h, w], "precision": "fp32" | "mixed" | "fp16",
      "proposals": {"kind": "precomputed"}
                 | {"kind": "maskrcnn", "layout": "split", "stage": "proposals",
                    "detector_stage": "detector", ...transform, anchor and RPN settings...},
      "stages": {
        "<name>": {"file": "<name>.onnx", "sha256": "...", "precision": "...", "opset": 17,
                   "inputs":  [{"name": ..., "dtype": "float32", "shape": ["B", 3, 255, 448]}],
                   "outputs": [...],
                   "parity_max_abs": ..., "parity_scale": ...}, ...},
      "versions": {"dmm_deploy": ..., "torch": ..., "onnx": ..., ...},
      "tensorrt_check": {"10.3": [], "11.0": []}
    }

Shapes hold integers for fixed axes and names for dynamic ones. :meth:`Bundle.load` checks
the format, the version, the model settings (:data:`SUPPORTED_BEHAVIOUR`) and every stage
file's SHA-256 and raises :class:`BundleError` (a ``ValueError``) with one line naming the
problem. A ``matching="exact"`` bundle's match stage outputs ``cost`` instead of
``assignment`` and ``matched``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "PRECISIONS",
    "REQUIRED_STAGES",
    "SUPPORTED_BEHAVIOUR",
    "Bundle",
    "BundleError",
    "StageSpec",
    "TensorSpec",
    "behaviour",
    "sha256_file",
    "unsupported_behaviour",
]

BUNDLE_FORMAT = "dmm-deploy-bundle"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
PRECISIONS = ("fp32", "mixed", "fp16")
REQUIRED_STAGES = ("encoder", "embed", "match")

# Model settings the runtime implements: field -> the values it runs (the first is the value
# of a manifest that lacks the field: the default pipeline). These are DMMConfig's compat
# preset, its exact-matching option and the six behaviour switches; any other value is
# refused at load time rather than run with different behaviour.
SUPPORTED_BEHAVIOUR: dict[str, tuple[str, ...]] = {
    "compat": ("default", "original"),
    "matching": ("dmm", "exact"),
    "matcher_variant": ("listing1", "original"),
    "input_resize": ("bilinear", "nearest"),
    "merge_at": ("frame", "input"),
    "proposal_order": ("score", "index"),
    "empty_proposals": ("drop", "keep"),
    "no_detections": ("pad", "last"),
}


def behaviour(config: dict) -> dict[str, str]:
    """The behaviour settings of a manifest's ``config`` (:data:`SUPPORTED_BEHAVIOUR`'s
    fields), absent ones filled with the default pipeline's values."""
    return {k: config.get(k, allowed[0]) for k, allowed in SUPPORTED_BEHAVIOUR.items()}


def unsupported_behaviour(config: dict) -> list[str]:
    """``field=value`` for each model setting of ``config`` this runtime does not implement
    (fields absent from ``config`` are taken as the default pipeline's)."""
    return [
        f"{k}={config[k]!r}"
        for k, allowed in SUPPORTED_BEHAVIOUR.items()
        if k in config and config[k] not in allowed
    ]


class BundleError(ValueError):
    """A bundle that cannot be used; the message is one line naming the problem."""


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape (ints or axis names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


@dataclass(frozen=True)
class StageSpec:
    """One stage graph of a bundle (see the module docstring)."""

    name: str
    file: str
    sha256: str
    precision: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    extra: dict

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "precision": self.precision,
            "opset": self.opset,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            **self.extra,
        }

    @classmethod
    def from_json(cls, name: str, d: dict) -> StageSpec:
        known = {"file", "sha256", "precision", "opset", "inputs", "outputs"}
        return cls(
            name=name,
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            precision=str(d["precision"]),
            opset=int(d["opset"]),
            inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def input_dtypes(self) -> dict[str, str]:
        return {t.name: t.dtype for t in self.inputs}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder. ``config`` is the exported model's DMMConfig as a dict."""

    path: Path
    version: int
    config: dict
    input_size: tuple[int, int]
    precision: str
    proposals: dict
    stages: dict[str, StageSpec]
    versions: dict
    manifest: dict

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> Bundle:
        """Read ``path/manifest.json``; with ``verify`` check every stage file's SHA-256.

        Raises :class:`BundleError` (one line) for a missing folder or file, an unreadable or
        unknown manifest, a bad precision, or a file whose hash differs from the manifest's.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle: {root} is not a folder")
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise BundleError(f"bundle: no {MANIFEST_NAME} in {root}")
        try:
            data = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"bundle: {mpath} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"bundle: {mpath} is not a {BUNDLE_FORMAT} manifest")
        version = data.get("version")
        if version != MANIFEST_VERSION:
            raise BundleError(
                f"bundle: manifest version {version!r} in {mpath} is not supported "
                f"(this runtime reads version {MANIFEST_VERSION}); re-export the bundle"
            )
        try:
            precision = str(data["precision"])
            stages = {n: StageSpec.from_json(n, s) for n, s in data["stages"].items()}
            config = dict(data["config"])
            size = tuple(int(v) for v in data["input_size"])
            proposals = dict(data["proposals"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"bundle: {mpath} is missing or has a bad field ({e!r})") from None
        if precision not in PRECISIONS:
            raise BundleError(f"bundle: unknown precision {precision!r} in {mpath}")
        unsupported = unsupported_behaviour(config)
        if unsupported:
            raise BundleError(
                f"bundle: {mpath} holds a model configured with {', '.join(unsupported)}, "
                "which this runtime does not implement (supported: "
                + "; ".join(f"{k} {'|'.join(v)}" for k, v in SUPPORTED_BEHAVIOUR.items())
                + ")"
            )
        needed = list(REQUIRED_STAGES)
        if config.get("refine", True):
            needed.append("decoder")
        if proposals.get("kind") == "maskrcnn":
            needed.append("proposals")
            if proposals.get("layout") == "split":
                needed.append(str(proposals.get("detector_stage", "detector")))
        missing = [s for s in needed if s not in stages]
        if missing:
            raise BundleError(f"bundle: {mpath} has no stage(s) {', '.join(missing)}")
        for spec in stages.values():
            file = root / spec.file
            if not file.is_file():
                raise BundleError(f"bundle: stage {spec.name!r} file {file} is missing")
            if verify and sha256_file(file) != spec.sha256:
                raise BundleError(
                    f"bundle: stage {spec.name!r} file {file} was modified "
                    "(its SHA-256 differs from the manifest's)"
                )
        return cls(
            path=root,
            version=int(version),
            config=config,
            input_size=(size[0], size[1]),
            precision=precision,
            proposals=proposals,
            stages=stages,
            versions=dict(data.get("versions", {})),
            manifest=data,
        )

    def stage_path(self, name: str) -> Path:
        """The graph file of stage ``name``."""
        return self.path / self.stages[name].file
