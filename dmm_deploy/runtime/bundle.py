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
the file (UTF-8 JSON), the format, the version, every field's type and range (``input_size``
two positive integers, ``config`` an object, stage files named by bare file names in the
folder, stage tensors with a dtype of
:data:`TENSOR_DTYPES`, the Mask R-CNN settings of a split ``proposals`` entry, see
:func:`~dmm_deploy.runtime.proposals.check_maskrcnn_spec`), the model settings
(:data:`SUPPORTED_BEHAVIOUR`) and every stage file's SHA-256, and raises :class:`BundleError`
(a ``ValueError``) with one line naming the manifest, the field and what was expected. Config
fields the runtime reads and the manifest lacks take DMMConfig's defaults
(:data:`CONFIG_DEFAULTS`, the behaviour switches :func:`behaviour`'s). A ``matching="exact"``
bundle's match stage outputs ``cost`` instead of ``assignment`` and ``matched``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dmm_deploy.runtime.proposals import (
    MASKRCNN_SINGLE_IO,
    MASKRCNN_SPLIT_IO,
    _is_int,
    _is_real,
    _shown,
    check_maskrcnn_spec,
)

__all__ = [
    "BUNDLE_FORMAT",
    "COARSE",
    "CONFIG_DEFAULTS",
    "LEVELS",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MATCH_EXACT_OUTPUTS",
    "PRECISIONS",
    "REQUIRED_STAGES",
    "RUNTIME_IO",
    "SUPPORTED_BEHAVIOUR",
    "TENSOR_DTYPES",
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
TENSOR_DTYPES = ("float32", "float16", "int64", "int32", "bool")
"""The dtypes a stage input or output may have (those the exporter writes)."""
PROPOSAL_KINDS = ("precomputed", "maskrcnn")

LEVELS = ("4", "8", "16", "32")
"""The encoder's feature strides (names of its ``match*`` and ``skip*`` outputs)."""
COARSE = ("32", "16", "8", "4")
"""The decoder's ConvLSTM levels, coarse to fine (names of its ``h*``/``c*``/``t*`` states)."""
RUNTIME_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": (("image",), (*(f"match{s}" for s in LEVELS), *(f"skip{s}" for s in LEVELS))),
    "embed": ((*(f"match{s}" for s in LEVELS), "boxes", "batch_index"), ("embeddings",)),
    "match": (
        ("templates", "embeddings", "prev_masks", "proposal_masks", "sizes"),
        ("assignment", "matched"),
    ),
    "decoder": (
        (
            *(f"skip{s}" for s in LEVELS),
            "masks",
            *(f"{k}{s}" for k in "hct" for s in COARSE),
        ),
        ("probabilities", *(f"{k}{s}_out" for k in "hc" for s in COARSE)),
    ),
}
"""What :func:`dmm_deploy.runtime.pipeline.step_streams` feeds each stage graph (input names)
and reads from it (outputs); a ``matching="exact"`` match stage outputs ``cost`` instead
(:data:`MATCH_EXACT_OUTPUTS`). The exporter's ``STAGE_IO``, kept here as data: the runtime
imports no torch."""
MATCH_EXACT_OUTPUTS = ("cost",)

CONFIG_DEFAULTS: dict[str, object] = {
    "refine": True,
    "top_k": 50,
    "nms_iou": 0.4,
    "box_threshold": 0.4,
}
"""DMMConfig's defaults of the config fields the runtime reads besides the behaviour
switches and ``hidden_size`` (a property of the exported graphs, so it has no default);
a manifest's ``config`` that lacks one of them gets this value."""

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


def _object(field: str, value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object, got {_shown(value)}")
    return value


def _string(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {_shown(value)}")
    return value


def _check_tensors(field: str, value) -> None:
    """``field`` (a stage's ``inputs`` or ``outputs``): a list of ``{"name", "dtype",
    "shape"}`` with unique names, dtypes of :data:`TENSOR_DTYPES`, shapes of non-negative
    integers and axis names."""
    if not isinstance(value, list):
        raise ValueError(f"{field} must be a list of tensors, got {_shown(value)}")
    seen = set()
    for i, t in enumerate(value):
        at = f"{field}[{i}]"
        _object(at, t)
        name = _string(f"{at}.name", t.get("name"))
        if name in seen:
            raise ValueError(f"{at}.name {name!r} appears twice in {field}")
        seen.add(name)
        dtype = t.get("dtype")
        if dtype not in TENSOR_DTYPES:
            raise ValueError(
                f"{at}.dtype ({name}) must be one of {', '.join(TENSOR_DTYPES)}, "
                f"got {_shown(dtype)}"
            )
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(
            (_is_int(v) and v >= 0) or (isinstance(v, str) and v) for v in shape
        ):
            raise ValueError(
                f"{at}.shape ({name}) must be a list of non-negative integers and axis names, "
                f"got {_shown(shape)}"
            )


def _check_stage(name: str, d) -> None:
    """One ``stages`` entry: the fields :meth:`StageSpec.from_json` reads, with their types."""
    at = f"stages.{name}"
    _object(at, d)
    file = _string(f"{at}.file", d.get("file"))
    if file in (".", "..") or "/" in file or "\\" in file:
        # the exporter writes bare names; a path could point outside the bundle
        raise ValueError(f"{at}.file must be a file name in the bundle folder, got {file!r}")
    for key in ("sha256", "precision"):
        if not isinstance(d.get(key), str):
            raise ValueError(f"{at}.{key} must be a string, got {_shown(d.get(key))}")
    if not _is_int(d.get("opset")):
        raise ValueError(f"{at}.opset must be an integer, got {_shown(d.get('opset'))}")
    _check_tensors(f"{at}.inputs", d.get("inputs"))
    _check_tensors(f"{at}.outputs", d.get("outputs"))


def _check_names(stage: dict, name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]):
    """Stage ``name``'s input names must be ``inputs`` (what the runtime feeds) and its outputs
    must include ``outputs`` (what the runtime reads)."""
    got = [t["name"] for t in stage["inputs"]]
    if sorted(got) != sorted(inputs):
        lacking = [n for n in inputs if n not in got]
        extra = [n for n in got if n not in inputs]
        raise ValueError(
            f"stages.{name}.inputs must be named {', '.join(inputs)} (what the runtime feeds)"
            + (f"; missing {', '.join(lacking)}" if lacking else "")
            + (f"; unexpected {_shown(extra)}" if extra else "")
        )
    have = {t["name"] for t in stage["outputs"]}
    missing = [n for n in outputs if n not in have]
    if missing:
        raise ValueError(
            f"stages.{name}.outputs must include {', '.join(outputs)} (what the runtime reads), "
            f"missing {', '.join(missing)}"
        )


def _check_config(config) -> dict:
    """``config`` as the runtime reads it: an object; ``hidden_size`` a positive integer,
    ``top_k`` too, ``box_threshold`` and ``nms_iou`` numbers in [0, 1], ``refine`` a bool
    (absent ones: :data:`CONFIG_DEFAULTS`). Returns a copy with the defaults filled in."""
    config = dict(_object("config", config))
    for key, default in CONFIG_DEFAULTS.items():
        config.setdefault(key, default)
    for key in ("hidden_size", "top_k"):
        if key not in config:
            raise ValueError(f"config.{key} is missing (a positive integer)")
        if not _is_int(config[key]) or config[key] < 1:
            raise ValueError(f"config.{key} must be a positive integer, got {_shown(config[key])}")
    for key in ("box_threshold", "nms_iou"):
        if not _is_real(config[key]) or not 0.0 <= config[key] <= 1.0:
            raise ValueError(f"config.{key} must be a number in [0, 1], got {_shown(config[key])}")
    if not isinstance(config["refine"], bool):
        raise ValueError(f"config.refine must be true or false, got {_shown(config['refine'])}")
    return config


def _check_input_size(value) -> tuple[int, int]:
    if not (
        isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)
    ):
        raise ValueError(
            f"input_size must be [height, width], two positive integers, got {_shown(value)}"
        )
    return value[0], value[1]


def _check_proposals(value) -> dict:
    """The ``proposals`` entry: ``{"kind": "precomputed"}`` (no ``layout``: there is no
    detector graph) or ``{"kind": "maskrcnn", ...}``, whose ``layout="split"`` settings are
    checked by :func:`~dmm_deploy.runtime.proposals.check_maskrcnn_spec`; without
    ``layout="split"`` it is the earlier single-graph layout."""
    proposals = dict(_object("proposals", value))
    kind = proposals.get("kind")
    if kind not in PROPOSAL_KINDS:
        raise ValueError(
            f"proposals.kind must be one of {', '.join(PROPOSAL_KINDS)}, got {_shown(kind)}"
        )
    if kind == "precomputed" and "layout" in proposals:
        raise ValueError(
            "proposals.layout belongs to kind 'maskrcnn' (a precomputed bundle has no detector "
            f"graphs), got {_shown(proposals['layout'])}"
        )
    if kind == "maskrcnn" and proposals.get("layout") == "split":
        check_maskrcnn_spec(proposals)
    return proposals


def _check_manifest(data: dict) -> tuple[dict, tuple[int, int], dict, dict]:
    """The fields of a manifest (format and version already checked): ``config`` with its
    defaults, ``input_size``, ``proposals`` and the raw ``stages`` entries, each checked;
    raises ``ValueError`` naming the field."""
    config = _check_config(data["config"])
    size = _check_input_size(data.get("input_size"))
    proposals = _check_proposals(data.get("proposals"))
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError(
            f"stages must be a JSON object of stage name -> stage, got {_shown(stages)}"
        )
    for name, stage in stages.items():
        _check_stage(name, stage)
    if "versions" in data:
        _object("versions", data["versions"])
    return config, size, proposals, stages


def _check_stage_names(stages: dict, config: dict, proposals: dict) -> None:
    """Input and output names of the stages the runtime runs against what it feeds and reads
    (:data:`RUNTIME_IO`, the Mask R-CNN graphs' in :mod:`dmm_deploy.runtime.proposals`)."""
    expected = {name: RUNTIME_IO[name] for name in REQUIRED_STAGES}
    matching = behaviour(config)["matching"]
    if matching == "exact":
        expected["match"] = (RUNTIME_IO["match"][0], MATCH_EXACT_OUTPUTS)
    outputs = {t["name"] for t in stages["match"]["outputs"]}
    if not set(expected["match"][1]) <= outputs:
        raise ValueError(
            f"stages.match.outputs must include {', '.join(expected['match'][1])} for config "
            f"matching={matching!r}, got {_shown(sorted(outputs))}"
        )
    if config["refine"]:
        expected["decoder"] = RUNTIME_IO["decoder"]
    if proposals["kind"] == "maskrcnn":
        if proposals.get("layout") == "split":
            expected.update(MASKRCNN_SPLIT_IO)
        else:
            expected["proposals"] = MASKRCNN_SINGLE_IO
    for name, (inputs, outputs) in expected.items():
        _check_names(stages[name], name, inputs, outputs)
    if "decoder" in expected:  # the decoder's first states are zeros of these shapes
        for t in stages["decoder"]["inputs"]:
            if t["name"].startswith("h") and not all(_is_int(v) for v in t["shape"][1:]):
                raise ValueError(
                    f"stages.decoder.inputs {t['name']} must have a fixed shape after the batch "
                    f"axis, got {_shown(t['shape'])}"
                )


def _check_encoder_size(stages: dict, size: tuple[int, int]) -> None:
    """The frames are resized to ``input_size`` and fed to the encoder: a fixed image size in
    the encoder's entry must be that size."""
    image = next(t for t in stages["encoder"]["inputs"] if t["name"] == "image")
    fixed = image["shape"][2:]
    if len(fixed) == 2 and all(_is_int(d) for d in fixed) and tuple(fixed) != tuple(size):
        raise ValueError(
            f"input_size {list(size)} differs from the encoder's image size {list(fixed)} "
            "(stages.encoder.inputs)"
        )


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

        Raises :class:`BundleError` (one line naming the manifest, the field and what was
        expected) for a missing folder or file, an unreadable, non-UTF-8 or unknown manifest, a
        missing or malformed field (see the module docstring), a model setting this runtime
        does not implement, or a file whose hash differs from the manifest's.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle: {root} is not a folder")
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise BundleError(f"bundle: no {MANIFEST_NAME} in {root}")
        try:
            text = mpath.read_bytes().decode("utf-8")
        except OSError as e:
            raise BundleError(f"bundle: {mpath} cannot be read ({e})") from None
        except UnicodeDecodeError as e:
            raise BundleError(f"bundle: {mpath} is not UTF-8 text ({e})") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise BundleError(f"bundle: {mpath} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"bundle: {mpath} is not a {BUNDLE_FORMAT} manifest")
        version = data.get("version")
        if version != MANIFEST_VERSION:
            raise BundleError(
                f"bundle: manifest version {version!r} in {mpath} is not supported "
                f"(this runtime reads version {MANIFEST_VERSION}); re-export the bundle"
            )
        precision = data.get("precision")
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise BundleError(
                f"bundle: unknown precision {_shown(precision)} in {mpath} "
                f"(precision must be one of {', '.join(PRECISIONS)})"
            )
        if not isinstance(data.get("config"), dict):
            raise BundleError(
                f"bundle: {mpath}: config must be a JSON object, got {_shown(data.get('config'))}"
            )
        unsupported = unsupported_behaviour(data["config"])
        if unsupported:
            raise BundleError(
                f"bundle: {mpath} holds a model configured with {', '.join(unsupported)}, "
                "which this runtime does not implement (supported: "
                + "; ".join(f"{k} {'|'.join(v)}" for k, v in SUPPORTED_BEHAVIOUR.items())
                + ")"
            )
        try:
            config, size, proposals, stage_data = _check_manifest(data)
        except ValueError as e:
            raise BundleError(" ".join(f"bundle: {mpath}: {e}".splitlines())) from None
        stages = {n: StageSpec.from_json(n, s) for n, s in stage_data.items()}
        needed = list(REQUIRED_STAGES)
        if config["refine"]:
            needed.append("decoder")
        if proposals["kind"] == "maskrcnn":
            needed.append("proposals")
            if proposals.get("layout") == "split":
                needed.append("detector")
        missing = [s for s in needed if s not in stages]
        if missing:
            raise BundleError(f"bundle: {mpath} has no stage(s) {', '.join(missing)}")
        try:
            _check_stage_names(stage_data, config, proposals)
            _check_encoder_size(stage_data, size)
        except ValueError as e:
            raise BundleError(" ".join(f"bundle: {mpath}: {e}".splitlines())) from None
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
            input_size=size,
            precision=precision,
            proposals=proposals,
            stages=stages,
            versions=dict(data.get("versions", {})),
            manifest=data,
        )

    def stage_path(self, name: str) -> Path:
        """The graph file of stage ``name``."""
        return self.path / self.stages[name].file
