"""compat="original" (the original code's test-time pipeline), switch by switch, against small
literal transcriptions of the original's behaviour; matching="exact"; the checkpoint warning."""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import dmm_deploy.model.checkpoint as checkpoint_module
from dmm_deploy.data import make_synthetic_video
from dmm_deploy.model import (
    COMPAT_FIXED,
    COMPAT_SWITCHES,
    Detections,
    DMMConfig,
    DMMNet,
    OracleProposals,
    OriginalCompatWarning,
    ProposalSource,
    VideoSegmenter,
    exact_assignment,
    frame_to_input,
    load_original_checkpoint,
    match_proposals,
    original_key_map,
    pad_proposals,
    pil_nearest_index,
    prepare_proposals,
    resize_masks,
)

SMALL = dict(backbone="resnet18", input_size=(48, 64), hidden_size=16)


# ----------------------------------------------------------------------------- config


def test_presets_resolve_the_switches():
    default, original = DMMConfig(), DMMConfig(compat="original")
    assert default.compat == "default" and default.matching == "dmm"
    for name, (_, dflt, orig) in COMPAT_SWITCHES.items():
        assert getattr(default, name) == dflt
        assert getattr(original, name) == orig
    assert original.switches == {k: v[2] for k, v in COMPAT_SWITCHES.items()}
    for name, value in COMPAT_FIXED.items():
        assert getattr(original, name) == value
    assert (original.n_grad, original.n_proj, original.lr) == (40, 5, 0.1)


@pytest.mark.parametrize("compat", ["default", "original"])
def test_config_is_plain_json_and_round_trips(compat):
    cfg = DMMConfig(compat=compat, matching="exact", **SMALL)
    text = json.dumps(dataclasses.asdict(cfg))
    again = DMMConfig(**json.loads(text))
    assert again == cfg


def test_original_preset_is_frozen():
    with pytest.raises(ValueError, match=r"compat='original' fixes input_resize='nearest'"):
        DMMConfig(compat="original", input_resize="bilinear")
    with pytest.raises(ValueError, match=r"compat='original' fixes n_grad=40"):
        DMMConfig(compat="original", n_grad=400)
    with pytest.raises(ValueError, match=r"compat='original' fixes top_k=50"):
        DMMConfig(compat="original", top_k=10)
    # the preset's own values may be spelled out; backbone, size, backend, matching stay free
    cfg = DMMConfig(compat="original", merge_at="input", matching="exact", **SMALL)
    assert cfg.merge_at == "input" and cfg.matching == "exact"


def test_default_combines_switches_freely_and_replace_rederives():
    cfg = DMMConfig(proposal_order="index", n_grad=7)
    assert cfg.proposal_order == "index" and cfg.merge_at == "frame"
    orig = DMMConfig(n_grad=40).replace(compat="original")
    assert orig.switches == DMMConfig(compat="original").switches
    back = orig.replace(compat="default", merge_at="input")
    assert back.merge_at == "input" and back.input_resize == "bilinear"
    with pytest.raises(ValueError, match="n_grad=40"):
        cfg.replace(compat="original")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(compat="legacy"), r"compat must be one of \('default', 'original'\)"),
        (dict(matching="hungarian"), r"matching must be one of \('dmm', 'exact'\)"),
        (dict(merge_at="output"), r"merge_at must be one of \('frame', 'input'\)"),
        (dict(no_detections="skip"), r"no_detections must be one of"),
        (dict(matcher_variant="paper"), r"matcher_variant must be one of"),
    ],
)
def test_config_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        DMMConfig(**kwargs)


# ----------------------------------------------------------------------------- input resize


def _pil_resize(a: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The original: ``Image.resize((w, h))`` with Pillow 6.1's default filter, NEAREST."""
    return np.array(Image.fromarray(a).resize((size_hw[1], size_hw[0]), Image.NEAREST))


@pytest.mark.parametrize("n_in, n_out", [(480, 255), (854, 448), (255, 480), (448, 854), (7, 3)])
def test_pil_nearest_index_is_pils(n_in, n_out):
    row = np.arange(n_in, dtype=np.int32)[None]
    assert np.array_equal(pil_nearest_index(n_in, n_out), _pil_resize(row, (1, n_out))[0])


def test_nearest_input_and_annotation_resize_are_pils():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 214, 3), dtype=np.uint8)
    x = frame_to_input(frame, (51, 90), "nearest")
    ref = torch.from_numpy(_pil_resize(frame, (51, 90))).permute(2, 0, 1)[None] / 255.0
    assert torch.equal(x, ref.to(torch.float32))
    labels = rng.integers(0, 4, (120, 214), dtype=np.uint8)
    m = resize_masks(torch.from_numpy(labels == 2)[None], (51, 90), "pil-nearest")[0]
    assert np.array_equal(m.numpy() > 0.5, _pil_resize(labels, (51, 90)) == 2)
    with pytest.raises(ValueError, match="mode must be"):
        frame_to_input(frame, (51, 90), "bicubic")


class _Recorder(ProposalSource):
    """Wraps a source; frames listed in ``empty`` get no detection."""

    def __init__(self, inner: ProposalSource, empty=()):
        self.inner, self.empty = inner, set(empty)

    def detect(self, index, frame):
        if index in self.empty:
            return Detections(
                np.zeros((0, 4)), np.zeros(0), np.zeros((0, *frame.shape[:2])), "frame"
            )
        return self.inner.detect(index, frame)


@pytest.fixture(scope="module")
def video():
    return make_synthetic_video(4, 45, 70, 2, late_objects=0, seed=3)


def _segmenter(video, cfg, empty=()):
    torch.manual_seed(0)
    source = _Recorder(OracleProposals(video.labels, seed=0), empty)
    return VideoSegmenter(DMMNet(cfg), source)


def test_segmenter_feeds_the_encoder_pils_nearest_resize(video):
    cfg = DMMConfig(input_resize="nearest", refine=False, **SMALL)
    seg = _segmenter(video, cfg)
    seen = []
    seg.model.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    seg.start(video.frames[0], video.first_mask)
    ref = torch.from_numpy(_pil_resize(video.frames[0], cfg.input_size)).permute(2, 0, 1)[None]
    assert torch.equal(seen[0], (ref / 255.0).to(torch.float32))


# ----------------------------------------------------------------------------- merge


def _original_merge(probs: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The original: ``bg = 1 - max``, ``cat([bg, masks]).max(0)`` index as the label, a
    palette PNG at the input size; its evaluation resizes it with PIL's NEAREST."""
    bg = 1.0 - probs.max(axis=0, initial=0.0)
    labels = np.concatenate([bg[None], probs]).argmax(axis=0).astype(np.uint8)
    return _pil_resize(labels, size_hw)


def test_merge_at_input_then_pil_nearest_to_the_frame(video):
    cfg = DMMConfig(merge_at="input", refine=False, **SMALL)
    seg = _segmenter(video, cfg)
    seg.start(video.frames[0], video.first_mask)
    assert seg.object_ids == [1, 2]  # slot k holds id k + 1, as in the original
    for t in range(1, 3):
        out = seg.step(video.frames[t])
        probs = seg.last_probabilities.numpy()
        assert np.array_equal(out, _original_merge(probs, video.frames[t].shape[:2]))


# ----------------------------------------------------------------------------- proposals


def _original_nms_keep(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """maskrcnn-benchmark's NMS as the original ran it: greedy by descending score, IoU with
    ``+1`` box sides, suppress ``> thr``; survivors returned sorted by detection index."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(boxes), bool)
    for a, i in enumerate(order):
        if not alive[i]:
            continue
        for j in order[a + 1 :]:
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1
            inter = max(w, 0) * max(h, 0)
            if inter / (area[i] + area[j] - inter) > thr:
                alive[j] = False
    return [int(i) for i in np.nonzero(alive)[0]]


def _original_box(mask: np.ndarray) -> list[float]:
    """The original's ``binmask_to_box``: tight box, or ``[0, 0, H, W]`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return [0.0, 0.0, float(mask.shape[0]), float(mask.shape[1])]
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def _random_frame_detections(rng, n: int, size: tuple[int, int]) -> Detections:
    h, w = size
    masks = np.zeros((n, h, w), np.float32)
    for k in range(n):
        x1, y1 = rng.integers(0, w - 8), rng.integers(0, h - 8)
        x2, y2 = x1 + rng.integers(3, 20), y1 + rng.integers(3, 16)
        masks[k, y1:y2, x1:x2] = rng.uniform(0.5, 1.0)
    masks[rng.choice(n, 3, replace=False)] *= 0.3  # below the 0.4 box threshold: empty
    scores = rng.permutation(n).astype(np.float32) / n  # distinct scores
    return Detections(np.zeros((n, 4)), scores, masks, "frame")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_order_and_kept_empty_masks_match_the_original(seed):
    rng = np.random.default_rng(seed)
    cfg = DMMConfig(proposal_order="index", empty_proposals="keep", top_k=6, **SMALL)
    det = _random_frame_detections(rng, 20, cfg.input_size)
    props = prepare_proposals(det, cfg.input_size, cfg)
    masks = det.masks.numpy()
    boxes = np.array([_original_box(m > cfg.box_threshold) for m in masks], np.float32)
    keep = _original_nms_keep(boxes, det.scores.numpy(), cfg.nms_iou)[: cfg.top_k]
    assert np.array_equal(props.boxes.numpy(), boxes[keep])
    assert torch.equal(props.masks, det.masks[keep])
    assert torch.equal(props.scores, det.scores[keep])


def test_each_proposal_switch_alone():
    rng = np.random.default_rng(5)
    base = DMMConfig(top_k=6, **SMALL)
    det = _random_frame_detections(rng, 20, base.input_size)
    default = prepare_proposals(det, base.input_size, base)
    assert (default.masks.flatten(1).amax(1) > base.box_threshold).all()  # empties dropped
    assert torch.equal(default.scores, default.scores.sort(descending=True).values)
    index = prepare_proposals(det, base.input_size, base.replace(proposal_order="index"))
    order = [int(torch.nonzero(det.scores == s)[0, 0]) for s in index.scores]
    assert order == sorted(order)  # ascending detection index
    kept = prepare_proposals(det, base.input_size, base.replace(empty_proposals="keep", top_k=20))
    empty = kept.masks.flatten(1).amax(1) <= base.box_threshold
    assert empty.any()
    assert kept.boxes[empty].tolist() == [[0.0, 0.0, 48.0, 64.0]] * int(empty.sum())


# ----------------------------------------------------------------------------- no detections


def test_frames_without_detections_reuse_the_last_ones_in_the_stream(video):
    for mode in ("pad", "last"):
        cfg = DMMConfig(no_detections=mode, refine=False, **SMALL)
        seg = _segmenter(video, cfg, empty={2, 3})
        seg.start(video.frames[0], video.first_mask)
        seg.step(video.frames[1])
        previous = seg.last_proposals
        seg.step(video.frames[2])
        if mode == "last":
            assert seg.last_proposals is previous and len(previous.scores) > 0
        else:
            assert len(seg.last_proposals.scores) == 0
            assert (seg.last_match.index == -1).all()
    # start() forgets them; before any detection the stream pads
    cfg = DMMConfig(no_detections="last", refine=False, **SMALL)
    seg = _segmenter(video, cfg, empty={1})
    seg.start(video.frames[0], video.first_mask)
    seg.step(video.frames[1])
    assert len(seg.last_proposals.scores) > 0  # frame 0's (the annotated frame's) detections
    seg.source.empty = {0, 1}
    seg.start(video.frames[0], video.first_mask)
    seg.step(video.frames[1])
    assert len(seg.last_proposals.scores) == 0


# ----------------------------------------------------------------------------- matching


@pytest.mark.parametrize("o, p", [(1, 1), (3, 2), (3, 7), (5, 12)])
def test_original_matcher_is_relax_match(o, p):
    spec = pytest.importorskip("spec_relax_match")
    torch.manual_seed(o * 100 + p)
    cost = -torch.rand(o, p, dtype=torch.float64)
    masks = torch.rand(p, 4, 5, dtype=torch.float64)
    cfg = DMMConfig(compat="original", matcher_backend="torch")
    res = match_proposals(cost, masks, cfg)
    padded, _ = pad_proposals(cost, masks)
    ref, _ = spec.relax_matching(padded, spec.original_init(padded), 40, 5, 0.1)
    torch.testing.assert_close(res.assignment, ref, atol=1e-10, rtol=0)


def _brute_force(cost: torch.Tensor) -> list[int]:
    n, m = cost.shape
    best = min(
        itertools.permutations(range(m), n), key=lambda c: sum(cost[i, c[i]] for i in range(n))
    )
    return list(best)


def test_exact_assignment_is_the_optimum_batched_and_padded():
    pytest.importorskip("scipy")
    torch.manual_seed(0)
    cost = torch.randn(4, 3, 5)
    sizes = torch.tensor([[3, 5], [2, 4], [1, 1], [3, 3]])
    hot = exact_assignment(cost, sizes)
    assert hot.shape == cost.shape and hot.dtype == cost.dtype
    for b, (nb, mb) in enumerate(sizes.tolist()):
        assert hot[b, :nb, :mb].argmax(1).tolist() == _brute_force(cost[b, :nb, :mb])
        assert hot[b].sum() == nb  # one 1 per valid row, zeros in the padding
    with pytest.raises(ValueError, match="n <= m"):
        exact_assignment(torch.randn(3, 2))


@pytest.mark.parametrize("o, p", [(3, 0), (3, 2), (2, 6)])
def test_exact_matching_in_the_model(o, p):
    pytest.importorskip("scipy")
    torch.manual_seed(p)
    cost = -torch.rand(o, p)
    masks = torch.rand(p, 4, 5)
    res = match_proposals(cost, masks, DMMConfig(matching="exact"))
    padded, padded_masks = pad_proposals(cost, masks)
    choice = _brute_force(padded)
    assert res.hard.argmax(1).tolist() == choice
    assert res.index.tolist() == [c if c < p else -1 for c in choice]
    assert torch.equal(res.matched, padded_masks[choice])


def test_exact_matching_without_scipy_is_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"matching='exact'\) needs scipy"):
        DMMNet(DMMConfig(matching="exact", **SMALL))


# ----------------------------------------------------------------------------- checkpoint


def _original_layout(net: DMMNet) -> dict[str, torch.Tensor]:
    sd = net.state_dict()
    return {orig: sd[ours] for orig, ours in original_key_map(list(sd)).items()}


def test_loading_original_weights_warns_once_unless_compat_original(monkeypatch):
    monkeypatch.setattr(checkpoint_module, "_compat_warned", False)
    torch.manual_seed(0)
    state = _original_layout(DMMNet(DMMConfig(**SMALL)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_original_checkpoint(DMMNet(DMMConfig(compat="original", **SMALL)), state)
        assert not caught
        for _ in range(2):
            load_original_checkpoint(DMMNet(DMMConfig(**SMALL)), state)
    assert len(caught) == 1
    assert issubclass(caught[0].category, OriginalCompatWarning)
    assert "compat='original'" in str(caught[0].message)


# ----------------------------------------------------------------------------- benchmark


@pytest.mark.slow
def test_compat_benchmark_sources_and_one_run():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import compat_jf

    v = make_synthetic_video(3, 45, 70, 2, late_objects=0, seed=1)
    cluttered = compat_jf.ClutteredProposals(v.labels, seed=0, p_empty=1.0)
    dets = [cluttered.detect(i, v.frames[i]) for i in range(3)]
    assert len(dets[0]) > 200  # frame 0 always has detections: distractors + faint ones
    peak = dets[0].masks.flatten(1).amax(1)
    assert int(((peak - 0.3).abs() < 1e-6).sum()) >= 3  # the faint ones (shuffled in)
    assert len(dets[1]) == len(dets[2]) == 0  # every later frame empty at p_empty=1
    source = compat_jf.make_source(v, "clean", seed=0)
    cfg = DMMConfig(**SMALL, compat="original", refine=False)
    res = compat_jf.run_one(v, cfg, source)
    assert 0.0 <= res["J&F"] <= 1.0 and res["s_per_frame"] > 0
    assert set(source.cache) == {0, 1, 2}  # detections computed once, replayed
    rows = [
        dict(
            mode="m",
            regime="clean",
            config=c,
            seed=s,
            **{"J&F": j, "J": j, "F": j},
            s_per_frame=1.0,
        )
        for c, s, j in [
            ("default", 0, 0.5),
            ("default", 1, 0.7),
            ("original", 0, 0.6),
            ("original", 1, 0.6),
        ]
    ]
    table = {r["config"]: r for r in compat_jf.summary(rows)}
    assert table["original"]["vs default"] == pytest.approx(0.0)
    assert (table["original"]["min diff"], table["original"]["max diff"]) == pytest.approx(
        (-0.1, 0.1)
    )


def test_compat_original_keeps_any_ids(video):
    remap = np.array([0, 9, 200], np.uint8)  # ids 1, 2 -> 9, 200
    labels = remap[video.labels]
    cfg = DMMConfig(compat="original", refine=False, **SMALL)
    torch.manual_seed(0)
    seg = VideoSegmenter(DMMNet(cfg), OracleProposals(labels, seed=0))
    out = list(seg.segment(video.frames, labels[0]))
    assert seg.object_ids == [9, 200]
    assert np.array_equal(out[0], labels[0])
    assert all(set(np.unique(o)) <= {0, 9, 200} for o in out)
    assert all((o == 200).any() and (o == 9).any() for o in out[1:])
