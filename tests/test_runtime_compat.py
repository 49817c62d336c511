"""The runtime on bundles of compat="original" and matching="exact" models against the torch
VideoSegmenter (random resnet18 weights at 96 x 160): the bike sample, and a clip whose
detections exercise frames without detections (pad, then reuse of the last), more detections
than top_k in detection-index order, kept empty masks, and a late object."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dmm_deploy.data import read_frame, read_mask  # noqa: E402
from dmm_deploy.export.bundle import export_bundle  # noqa: E402
from dmm_deploy.model import (  # noqa: E402
    Detections,
    DMMConfig,
    DMMNet,
    PrecomputedProposals,
    VideoSegmenter,
)
from dmm_deploy.model.sources import save_precomputed  # noqa: E402
from dmm_deploy.runtime import (  # noqa: E402
    Bundle,
    BundleError,
    Runtime,
    StreamingSegmenter,
    StreamState,
    step_streams,
)
from dmm_deploy.runtime.proposals import PrecomputedDetections  # noqa: E402

SMALL = dict(backbone="resnet18", input_size=(96, 160))


def _blobs(g, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    out = []
    for _ in range(n):
        c, r = g.uniform(0.3, 0.7, 2), g.uniform(0.2, 0.5, 2)
        out.append(np.clip(1.2 - ((xx - c[0]) / r[0]) ** 2 - ((yy - c[1]) / r[1]) ** 2, 0, 1))
    return np.stack(out).astype(np.float32)


def _random(g, n: int, size) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    xy = g.uniform(0, 1, (n, 2)) * [w * 0.8, h * 0.8]
    wh = g.uniform(0.05, 0.4, (n, 2)) * [w, h]
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), _blobs(g, n)


def _grid(g, size, rows: int = 8, cols: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """rows x cols detections in disjoint cells: all survive NMS (more than top_k = 50)."""
    h, w = size
    ch, cw = h / rows, w / cols
    boxes = [
        [c * cw + 0.1 * cw, r * ch + 0.1 * ch, c * cw + 0.9 * cw, r * ch + 0.9 * ch]
        for r in range(rows)
        for c in range(cols)
    ]
    return np.array(boxes, np.float32), _blobs(g, rows * cols)


def edge_case_detections(size, seed: int = 0) -> list[Detections]:
    """Six frames: no detections before any (pad); 80 disjoint detections with random scores
    and 3 empty masks (index vs score top-k, kept empties); none (reuse of the last); 12 random
    with 2 empty; none again; 20 random."""
    g = np.random.default_rng(seed)
    out = []
    for spec in [None, ("grid", 3), None, ("random", 12, 2), None, ("random", 20, 0)]:
        if spec is None:
            out.append(Detections.empty())
            continue
        if spec[0] == "grid":
            boxes, masks = _grid(g, size)
            empty = spec[1]
        else:
            boxes, masks = _random(g, spec[1], size)
            empty = spec[2]
        masks[g.choice(len(masks), empty, replace=False)] = 0.0
        scores = g.uniform(0, 1, len(boxes)).astype(np.float32)
        out.append(Detections(boxes, scores, masks, "box"))
    return out


@pytest.fixture(scope="module")
def clips(shared_dir, tmp_path_factory):
    """bike with random detections; and bike's frames as a six-frame clip with the edge-case
    detections above and a late object (id 9) annotated at frame 3."""
    root = shared_dir / "data" / "vos_samples"
    tmp = tmp_path_factory.mktemp("compat")
    frames = sorted((root / "images" / "bike").glob("*.jpg"))
    size = read_frame(frames[0]).shape[:2]
    first = read_mask(root / "masks" / "bike" / "00000.png")
    g = np.random.default_rng(1)
    bike = tmp / "bike.npz"
    dets = []
    for _ in frames:
        boxes, masks = _random(g, 15, size)
        dets.append(Detections(boxes, g.uniform(0, 1, 15).astype(np.float32), masks, "box"))
    save_precomputed(bike, dets, size)
    edge = tmp / "edge.npz"
    save_precomputed(edge, edge_case_detections(size), size)
    late = np.zeros(size, np.uint8)
    late[300:420, 40:200] = 9
    clip = [frames[i % len(frames)] for i in range(6)]
    return {"bike": (frames, first, {}, bike), "edge": (clip, first, {3: late}, edge)}


def _export(tmp_path_factory, **cfg):
    torch.manual_seed(0)
    net = DMMNet(DMMConfig(**SMALL, **cfg)).eval()
    out = tmp_path_factory.mktemp("bundle_" + "_".join(cfg.values()))
    export_bundle(net, out, log=lambda s: None)
    return net, out


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return _export(tmp_path_factory, compat="original")


@pytest.fixture(scope="module")
def original_exact(tmp_path_factory):
    return _export(tmp_path_factory, compat="original", matching="exact")


def _compare(net, bundle_dir, clip):
    """Both pipelines frame by frame: label maps, and each frame's proposals (boxes)."""
    frames, first, anns, npz = clip
    ref = VideoSegmenter(net, PrecomputedProposals(npz))
    rt = Runtime.open(bundle_dir, threads=1)
    seg = StreamingSegmenter(rt, rt.proposal_source(npz))
    agree, n_props = [], []
    for i, frame in enumerate(frames):
        if i == 0:
            a, b = ref.start(frame, first), seg.start(frame, first)
        else:
            a, b = ref.step(frame, anns.get(i)), seg.step(frame, anns.get(i))
        agree.append(float((a == b).mean()))
        assert np.unique(a).tolist() == np.unique(b).tolist()
        got = seg.state.last_proposals.boxes
        np.testing.assert_array_equal(got, ref.last_proposals.boxes.numpy())
        n_props.append(len(got))
    return agree, n_props, seg


def test_original_bundle_manifest_carries_the_settings(original):
    net, out = original
    m = json.loads((out / "manifest.json").read_text())
    for k, v in net.cfg.switches.items():
        assert m["config"][k] == v
    assert m["config"]["compat"] == "original" and m["config"]["matcher_variant"] == "original"
    assert Bundle.load(out).config["merge_at"] == "input"
    types = {n["op_type"] for n in _graph_nodes(out / "match.onnx")}
    assert not types & {"Loop", "If", "Scan"}, types


def _graph_nodes(path):
    import onnx

    return [{"op_type": n.op_type} for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("clip", ["bike", "edge"])
def test_original_bundle_matches_the_video_segmenter(original, clips, clip):
    net, out = original
    agree, n_props, seg = _compare(net, out, clips[clip])
    assert min(agree) >= 0.999, agree
    if clip == "edge":
        # pad (nothing yet), 50 of 80 in index order (+ one kept empty: 81 -> NMS), reuse, ...
        assert n_props[0] == 0 and n_props[1] == 50 and n_props[2] == 50, n_props
        assert n_props[4] == n_props[3] and 9 in seg.object_ids


def test_original_bundle_keeps_empty_proposals_with_the_original_box(original, clips):
    _, out = original
    frames, first, anns, npz = clips["edge"]
    rt = Runtime.open(out, threads=1)
    seg = StreamingSegmenter(rt, rt.proposal_source(npz))
    seg.start(frames[0], first)
    seg.step(frames[1])
    reused = seg.state.last_proposals
    seg.step(frames[2])  # no detections: the previous frame's proposals, the same arrays
    assert seg.state.last_proposals is reused
    seg.step(frames[3], anns[3])
    boxes = seg.state.last_proposals.boxes
    h, w = SMALL["input_size"]
    assert any((b == [0, 0, h, w]).all() for b in boxes), boxes
    seg.start(frames[0], first)  # start forgets the stream's last detections
    assert seg.state.last_detected is None and len(seg.state.last_proposals.boxes) == 0


def test_exact_bundle_matches_the_video_segmenter(original_exact, clips):
    net, out = original_exact
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["matching"] == "exact"
    assert [t["name"] for t in m["stages"]["match"]["outputs"]] == ["cost"]
    agree, _, _ = _compare(net, out, clips["edge"])
    assert min(agree) >= 0.999, agree


def test_exact_bundle_runs_without_torch_or_scipy(original_exact, clips, repo_root, shared_dir):
    """A fresh interpreter where importing torch or scipy fails segments with the exact bundle."""
    import subprocess
    import sys

    _, out = original_exact
    frames, _, _, npz = clips["edge"]
    mask = shared_dir / "data" / "vos_samples" / "masks" / "bike" / "00000.png"
    code = (
        "import sys\n"
        "sys.modules.update(torch=None, scipy=None)  # any import of them raises\n"
        "from dmm_deploy.data import read_mask\n"
        "from dmm_deploy.runtime import Runtime, StreamingSegmenter\n"
        f"rt = Runtime.open({str(out)!r}, threads=1)\n"
        f"seg = StreamingSegmenter(rt, rt.proposal_source({str(npz)!r}))\n"
        f"labels = list(seg.segment({[str(f) for f in frames[:3]]!r}, read_mask({str(mask)!r})))\n"
        "assert len(labels) == 3 and seg.state.last_index is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)


def test_streams_with_last_reuse_batch_like_each_alone(original, clips):
    """step_streams over the edge clip and bike together (different no-detection frames,
    a late object) equals each stream alone."""
    _, out = original
    rt = Runtime.open(out, threads=1)
    names = ["edge", "bike"]
    alone = {}
    for n in names:
        frames, first, anns, npz = clips[n]
        seg = StreamingSegmenter(rt, PrecomputedDetections(npz))
        alone[n] = list(seg.segment(frames[:4], first, anns))
    states = [StreamState(PrecomputedDetections(clips[n][3])) for n in names]
    for i in range(4):
        images = [read_frame(clips[n][0][i]) for n in names]
        anns = [clips[n][1] if i == 0 else clips[n][2].get(i) for n in names]
        for n, lab in zip(names, step_streams(rt, states, images, anns), strict=True):
            np.testing.assert_array_equal(lab, alone[n][i])


def test_unknown_behaviour_values_are_refused_in_one_line(original, tmp_path):
    import shutil

    _, out = original
    root = tmp_path / "b"
    shutil.copytree(out, root)
    data = json.loads((root / "manifest.json").read_text())
    data["config"]["merge_at"] = "somewhere"
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert "\n" not in str(e.value) and "merge_at='somewhere'" in str(e.value)


@pytest.mark.slow
def test_original_bundle_at_the_originals_input_size(clips, tmp_path):
    """compat="original" at 255 x 448 (the size its checkpoints were evaluated at, where PIL's
    NEAREST index rule departs from the exact one on 13 of 255 rows), on the edge clip."""
    torch.manual_seed(1)
    net = DMMNet(DMMConfig(backbone="resnet18", input_size=(255, 448), compat="original")).eval()
    export_bundle(net, tmp_path, log=lambda s: None)
    frames, first, anns, npz = clips["edge"]
    agree, n_props, seg = _compare(net, tmp_path, (frames[:4], first, anns, npz))
    assert min(agree) >= 0.999, agree
    assert n_props[:3] == [0, 50, 50] and 9 in seg.object_ids, n_props
