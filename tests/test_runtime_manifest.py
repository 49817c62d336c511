"""A malformed ``manifest.json`` is one :class:`BundleError` line at load time (no traceback
from the first frame): each case tampers with a copy of one small exported bundle."""

import copy
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from dmm_deploy.export.bundle import export_bundle  # noqa: E402
from dmm_deploy.model import DMMConfig, DMMNet  # noqa: E402
from dmm_deploy.runtime import Bundle, BundleError, Runtime  # noqa: E402
from dmm_deploy.runtime.proposals import (  # noqa: E402
    MASKRCNN_SINGLE_IO,
    MASKRCNN_SPLIT_IO,
    MaskRCNNDetector,
    check_maskrcnn_spec,
)

CFG = DMMConfig(backbone="resnet18", input_size=(96, 160))

# a split Mask R-CNN "proposals" entry as the exporter writes it (torchvision's defaults)
SPLIT_SPEC = {
    "kind": "maskrcnn",
    "layout": "split",
    "stage": "proposals",
    "detector_stage": "detector",
    "min_size": 800,
    "max_size": 1333,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "size_divisible": 32,
    "cell_anchors": [[[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0]]] * 5,
    "rpn_weights": [1.0, 1.0, 1.0, 1.0],
    "rpn_clip": 4.135166556742356,
    "rpn_min_size": 0.001,
    "rpn_score_thresh": 0.0,
    "pre_nms_top_n": 1000,
    "post_nms_top_n": 1000,
    "detections_per_img": 100,
    "score_thresh": 0.05,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundle")
    export_bundle(DMMNet(CFG).eval(), out, log=lambda s: None)
    return out


@pytest.fixture
def tampered(exported, tmp_path):
    """``tampered(change)``: a copy of the bundle whose manifest ``change(data)`` edited in
    place (or replaced, when it returns something)."""

    def make(change) -> Path:
        root = tmp_path / "b"
        shutil.copytree(exported, root)
        data = json.loads((root / "manifest.json").read_text())
        new = change(data)
        (root / "manifest.json").write_text(json.dumps(data if new is None else new))
        return root

    return make


def _error(root: Path) -> str:
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert str(root / "manifest.json") in msg, msg
    return msg


def _tensor(data, stage, side, name):
    return next(t for t in data["stages"][stage][side] if t["name"] == name)


def _as_stage(data, stage, io, source="encoder"):
    """Stage ``stage``: a copy of ``source``'s entry (same file and hash) with ``io``'s
    input and output names."""
    entry = copy.deepcopy(data["stages"][source])
    entry["inputs"] = [{"name": n, "dtype": "float32", "shape": ["B", 3]} for n in io[0]]
    entry["outputs"] = [{"name": n, "dtype": "float32", "shape": ["B", 3]} for n in io[1]]
    data["stages"][stage] = entry


def _split(data, **changes):
    spec = {**SPLIT_SPEC, **changes}
    data["proposals"] = {k: v for k, v in spec.items() if v is not ...}
    for name, io in MASKRCNN_SPLIT_IO.items():
        _as_stage(data, name, io)


def _all(*changes):
    def change(data):
        for c in changes:
            c(data)

    return change


def _set(key, value):
    def change(data):
        data[key] = value

    return change


def _config(key, value):
    def change(data):
        if value is ...:
            del data["config"][key]
        else:
            data["config"][key] = value

    return change


def _rename(stage, side, old, new):
    def change(data):
        _tensor(data, stage, side, old)["name"] = new

    return change


def _tensor_field(stage, side, name, key, value):
    def change(data):
        _tensor(data, stage, side, name)[key] = value

    return change


def _stage_field(stage, key, value):
    def change(data):
        data["stages"][stage][key] = value

    return change


# (case id, change, words the message must hold)
CASES = [
    ("stages-list", _set("stages", []), "stages must be a JSON object"),
    ("stages-null", _set("stages", None), "stages must be a JSON object"),
    ("stages-empty", _set("stages", {}), "stages must be a JSON object"),
    ("stage-not-object", lambda d: d["stages"].update(embed=[]), "stages.embed must be a JSON"),
    ("stage-no-file", _stage_field("embed", "file", None), "stages.embed.file"),
    # stage files are bare names in the bundle folder: nothing outside it is read
    (
        "stage-file-outside",
        _stage_field("embed", "file", "../other/embed.onnx"),
        "stages.embed.file must be a file name in the bundle folder",
    ),
    (
        "stage-file-absolute",
        _stage_field("embed", "file", "/tmp/embed.onnx"),
        "stages.embed.file must be a file name",
    ),
    (
        "stage-file-parent",
        _stage_field("embed", "file", ".."),
        "stages.embed.file must be a file name",
    ),
    ("stage-opset-text", _stage_field("embed", "opset", "17"), "stages.embed.opset"),
    ("stage-inputs-null", _stage_field("match", "inputs", None), "stages.match.inputs"),
    ("input-size-one", _set("input_size", [96]), "input_size must be [height, width]"),
    ("input-size-text", _set("input_size", "96"), "input_size must be [height, width]"),
    ("input-size-zero", _set("input_size", [96, 0]), "input_size must be [height, width]"),
    ("input-size-float", _set("input_size", [96.5, 160]), "input_size must be [height, width]"),
    ("input-size-bool", _set("input_size", [True, 160]), "input_size must be [height, width]"),
    ("input-size-missing", lambda d: d.__delitem__("input_size"), "input_size"),
    (
        "input-size-not-the-encoders",
        _set("input_size", [97, 160]),
        "input_size [97, 160] differs from the encoder's image size [96, 160]",
    ),
    ("precision-number", _set("precision", 5), "precision must be one of fp32"),
    ("config-list", _set("config", []), "config must be a JSON object"),
    ("config-null", _set("config", None), "config must be a JSON object"),
    ("box-threshold-text", _config("box_threshold", "0.4"), "config.box_threshold"),
    ("nms-iou-above-one", _config("nms_iou", 1.5), "config.nms_iou"),
    ("top-k-zero", _config("top_k", 0), "config.top_k must be a positive integer"),
    ("top-k-float", _config("top_k", 2.5), "config.top_k must be a positive integer"),
    ("hidden-size-missing", _config("hidden_size", ...), "config.hidden_size is missing"),
    ("refine-text", _config("refine", "no"), "config.refine must be true or false"),
    ("versions-list", _set("versions", []), "versions must be a JSON object"),
    (
        "dtype-unknown",
        _tensor_field("embed", "inputs", "batch_index", "dtype", "int128"),
        "stages.embed.inputs[5].dtype (batch_index) must be one of float32",
    ),
    (
        "dtype-number",
        _tensor_field("encoder", "outputs", "match4", "dtype", 5),
        "stages.encoder.outputs[0].dtype (match4)",
    ),
    (
        "shape-text",
        _tensor_field("match", "inputs", "sizes", "shape", "B"),
        "stages.match.inputs[4].shape (sizes)",
    ),
    (
        "name-missing",
        _tensor_field("embed", "outputs", "embeddings", "name", None),
        "stages.embed.outputs[0].name must be a non-empty string",
    ),
    (
        "name-twice",
        _rename("embed", "inputs", "match8", "match4"),
        "stages.embed.inputs[1].name 'match4' appears twice",
    ),
    (
        "decoder-input-renamed",
        _rename("decoder", "inputs", "h32", "hidden32"),
        "stages.decoder.inputs must be named",
    ),
    (
        "decoder-output-renamed",
        _rename("decoder", "outputs", "probabilities", "probs"),
        "stages.decoder.outputs must include probabilities",
    ),
    (
        "decoder-state-shape-dynamic",
        _tensor_field("decoder", "inputs", "h16", "shape", ["B", "C", 6, 10]),
        "stages.decoder.inputs h16 must have a fixed shape",
    ),
    ("proposals-list", _set("proposals", []), "proposals must be a JSON object"),
    ("proposals-kind-unknown", _set("proposals", {"kind": "yolo"}), "proposals.kind"),
    ("proposals-kind-missing", _set("proposals", {}), "proposals.kind"),
    (
        "precomputed-split",
        _set("proposals", {"kind": "precomputed", "layout": "split"}),
        "proposals.layout belongs to kind 'maskrcnn'",
    ),
]

# the Mask R-CNN settings MaskRCNNDetector reads, each missing
SPLIT_FIELDS = [
    "min_size",
    "max_size",
    "size_divisible",
    "image_mean",
    "image_std",
    "cell_anchors",
    "rpn_weights",
    "rpn_clip",
    "rpn_min_size",
    "rpn_score_thresh",
]
CASES += [
    (f"split-no-{f}", lambda d, f=f: _split(d, **{f: ...}), f"proposals.{f} must be")
    for f in SPLIT_FIELDS
]
CASES += [
    ("split-size-divisible-zero", lambda d: _split(d, size_divisible=0), "size_divisible"),
    ("split-min-size-text", lambda d: _split(d, min_size="800"), "proposals.min_size"),
    ("split-std-zero", lambda d: _split(d, image_std=[0.2, 0.0, 0.2]), "proposals.image_std"),
    ("split-mean-two", lambda d: _split(d, image_mean=[0.4, 0.4]), "proposals.image_mean"),
    (
        "split-three-anchor-levels",
        lambda d: _split(d, cell_anchors=SPLIT_SPEC["cell_anchors"][:3]),
        "proposals.cell_anchors",
    ),
    (
        "split-anchor-of-three",
        lambda d: _split(d, cell_anchors=[[[0.0, 0.0, 1.0]]] * 5),
        "proposals.cell_anchors",
    ),
    ("split-weights-zero", lambda d: _split(d, rpn_weights=[1, 1, 0, 1]), "proposals.rpn_weights"),
    ("split-min-size-negative", lambda d: _split(d, rpn_min_size=-1), "proposals.rpn_min_size"),
    ("split-detector-stage", lambda d: _split(d, detector_stage="det"), "detector_stage"),
    (
        "split-without-its-stages",
        lambda d: d.update(proposals=dict(SPLIT_SPEC)),
        "has no stage(s) proposals, detector",
    ),
    (
        "split-heads-renamed",
        _all(_split, _rename("proposals", "outputs", "valid", "keep")),
        "stages.proposals.outputs must include boxes, scores, masks, valid",
    ),
    (
        "split-detector-input-renamed",
        _all(_split, _rename("detector", "inputs", "image", "images")),
        "stages.detector.inputs must be named image",
    ),
    (
        "single-graph-no-stage",
        _set("proposals", {"kind": "maskrcnn", "stage": "proposals"}),
        "has no stage(s) proposals",
    ),
    (
        "single-graph-not-from-image",
        _all(
            _set("proposals", {"kind": "maskrcnn"}),
            lambda d: d["stages"].update(proposals=copy.deepcopy(d["stages"]["embed"])),
        ),
        "stages.proposals.inputs must be named image",
    ),
    (
        "single-graph-other-layout",
        _all(
            _set("proposals", {"kind": "maskrcnn", "layout": "one"}),
            lambda d: _as_stage(d, "proposals", (("image",), ("boxes", "scores"))),
        ),
        "stages.proposals.outputs must include boxes, scores, masks",
    ),
]


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_manifest_is_one_bundle_error_line(tampered, change, words):
    msg = _error(tampered(change))
    assert words in msg, msg


# the names the pipeline feeds and reads (RUNTIME_IO; matching "exact" reads "cost")
STAGE_NAME_CASES = [
    ("encoder-output-renamed", _rename("encoder", "outputs", "skip4", "skip_4"), "encoder"),
    ("embed-input-renamed", _rename("embed", "inputs", "boxes", "rois"), "embed"),
    ("match-input-renamed", _rename("match", "inputs", "sizes", "size"), "match"),
    ("exact-matching-on-dmm-outputs", _config("matching", "exact"), "matching='exact'"),
]


@pytest.mark.parametrize(
    ("change", "words"), [c[1:] for c in STAGE_NAME_CASES], ids=[c[0] for c in STAGE_NAME_CASES]
)
def test_required_stage_names_are_checked(tampered, change, words):
    root = tampered(change)
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_manifest_not_utf8_is_one_line(exported, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(exported, root)
    text = (root / "manifest.json").read_text().replace('"resnet18"', '"r\u00e9snet18"')
    (root / "manifest.json").write_bytes(text.encode("latin-1"))
    assert "is not UTF-8 text" in _error(root)


def test_unreadable_manifest_is_not_called_bad_json(exported, tmp_path, monkeypatch):
    root = tmp_path / "b"
    shutil.copytree(exported, root)

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    msg = _error(root)
    assert "cannot be read" in msg and "Permission denied" in msg and "JSON" not in msg


def test_bad_json_is_still_named(tampered, exported, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(exported, root)
    (root / "manifest.json").write_text('{"format": ')
    assert "is not valid JSON" in _error(root)


def test_valid_manifests_load_as_before(exported, tampered):
    b = Bundle.load(exported)
    data = json.loads((exported / "manifest.json").read_text())
    assert b.config == data["config"] and b.input_size == (96, 160)
    assert b.proposals == {"kind": "precomputed"} and set(b.stages) == set(data["stages"])
    # absent post-processing fields take DMMConfig's defaults, as the behaviour switches do
    b = Bundle.load(tampered(_all(_config("top_k", ...), _config("nms_iou", ...))))
    assert b.config["top_k"] == CFG.top_k and b.config["nms_iou"] == CFG.nms_iou


def test_hand_written_maskrcnn_entries_that_are_well_formed_load(tampered, tmp_path):
    b = Bundle.load(tampered(_split))
    assert b.proposals["layout"] == "split" and {"detector", "proposals"} <= set(b.stages)
    shutil.rmtree(tmp_path / "b")

    def single(d):
        d["proposals"] = {"kind": "maskrcnn", "stage": "proposals", "min_size": 800}
        _as_stage(d, "proposals", MASKRCNN_SINGLE_IO)

    assert Bundle.load(tampered(single)).proposals["kind"] == "maskrcnn"


def test_runtime_open_refuses_before_any_stage_is_opened(tampered):
    root = tampered(lambda d: _split(d, size_divisible=0))
    with pytest.raises(BundleError) as e:
        Runtime.open(root)
    assert "proposals.size_divisible" in str(e.value) and "\n" not in str(e.value)


def test_maskrcnn_spec_check_on_its_own():
    spec = {k: v for k, v in SPLIT_SPEC.items() if k != "rpn_clip"}
    with pytest.raises(ValueError, match=r"proposals\.rpn_clip must be a number, got nothing"):
        check_maskrcnn_spec(spec)
    check_maskrcnn_spec(SPLIT_SPEC)
    MaskRCNNDetector(SPLIT_SPEC, None, None)
