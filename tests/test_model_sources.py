"""Proposal sources: oracle (seeded, configurable), precomputed files, torchvision Mask R-CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmm_deploy.model import (
    Detections,
    DMMConfig,
    MaskRCNNProposals,
    OracleProposals,
    PrecomputedProposals,
    ProposalSource,
    prepare_proposals,
    save_precomputed,
)


def _labels(t: int = 3, h: int = 40, w: int = 50) -> list[np.ndarray]:
    out = []
    for i in range(t):
        lab = np.zeros((h, w), np.uint8)
        lab[5 + i : 15 + i, 5:20] = 4
        lab[25:35, 20 + i : 40 + i] = 9
        out.append(lab)
    return out


FRAME = np.zeros((40, 50, 3), np.uint8)


# ----------------------------------------------------------------------------- oracle


def test_oracle_exact_when_noise_is_off():
    labels = _labels()
    src = OracleProposals(
        labels, jitter=0, split_prob=0, merge_prob=0, n_distractors=0, confidence=0.9
    )
    assert isinstance(src, ProposalSource)
    det = src.detect(1, FRAME)
    assert det.kind == "frame" and len(det) == 2 and det.masks.dtype == torch.float32
    for oid, mask in zip((4, 9), det.masks, strict=True):
        expected = torch.from_numpy(labels[1] == oid).float() * 0.9
        torch.testing.assert_close(mask, expected)
    assert det.boxes[0].tolist() == [5, 6, 19, 15]
    assert ((det.scores >= 0.7) & (det.scores <= 1.0)).all()


def test_oracle_is_seeded_and_order_independent():
    labels = _labels()
    a = OracleProposals(labels, seed=3)
    b = OracleProposals(labels, seed=3)
    c = OracleProposals(labels, seed=4)
    d2_first = b.detect(2, FRAME)
    for i in range(3):
        da, db = a.detect(i, FRAME), b.detect(i, FRAME)
        assert torch.equal(da.masks, db.masks) and torch.equal(da.scores, db.scores)
    assert torch.equal(a.detect(2, FRAME).masks, d2_first.masks)
    dc = c.detect(2, FRAME)
    assert dc.masks.shape != d2_first.masks.shape or not torch.equal(dc.masks, d2_first.masks)


def test_oracle_noise_kinds():
    labels = _labels()
    src = OracleProposals(
        labels, jitter=2, split_prob=1.0, merge_prob=1.0, n_distractors=4, drop_prob=0.0
    )
    det = src.detect(0, FRAME)
    # 2 true + 2 x 2 halves + 1 merge + up to 4 distractors (clipped ones may be empty)
    assert 7 <= len(det) <= 11
    true = det.scores >= 0.7
    assert int(true.sum()) == 2
    assert (det.scores[~true] <= 0.6).all()
    dropped = OracleProposals(labels, drop_prob=1.0, split_prob=0, merge_prob=0, n_distractors=0)
    assert len(dropped.detect(0, FRAME)) == 0
    assert dropped.detect(0, FRAME).masks.shape == (0, 40, 50)


def test_oracle_accepts_callables_and_checks_input():
    src = OracleProposals(lambda i: _labels()[i], n_distractors=0)
    assert len(src.detect(0, FRAME)) >= 2
    with pytest.raises(ValueError, match="shape"):
        src.detect(0, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="split_prob"):
        OracleProposals(_labels(), split_prob=2.0)
    with pytest.raises(TypeError, match="labels"):
        OracleProposals(5)


# ----------------------------------------------------------------------------- precomputed


def test_precomputed_round_trip_frame_masks(tmp_path):
    labels = _labels(4)
    oracle = OracleProposals(labels, seed=1)
    dets = [oracle.detect(i, FRAME) for i in range(4)]
    dets[2] = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 40, 50)), "frame")
    path = tmp_path / "video.npz"
    save_precomputed(path, dets, (40, 50))
    src = PrecomputedProposals(path)
    assert src.num_frames == 4 and src.image_size == (40, 50) and src.kind == "frame"
    for i, d in enumerate(dets):
        got = src.detect(i, FRAME)
        assert len(got) == len(d)
        torch.testing.assert_close(got.boxes, d.boxes)
        torch.testing.assert_close(got.scores, d.scores)
        torch.testing.assert_close(got.masks, d.masks, atol=1 / 255, rtol=0)
    # the file records 4 frames: frame 7 belongs to another (longer) video
    with pytest.raises(ValueError, match=r"frame 7 is beyond the 4 frames of .*video\.npz"):
        src.detect(7, FRAME)


def test_precomputed_box_masks_and_errors(tmp_path):
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [10.0, 10.0, 40.0, 35.0]])
    d0 = Detections(boxes, torch.tensor([0.9, 0.4]), torch.rand(2, 28, 28, generator=gen), "box")
    path = tmp_path / "v.npz"
    save_precomputed(path, [d0, Detections.empty()], (40, 50))
    src = PrecomputedProposals(path)
    got = src.detect(0, FRAME)
    assert got.kind == "box" and got.masks.shape == (2, 28, 28)
    cfg = DMMConfig(backbone="resnet18", input_size=(40, 50), hidden_size=16)
    props = prepare_proposals(got, (40, 50), cfg)
    assert props.masks.shape[1:] == (40, 50)

    with pytest.raises(ValueError, match=r"v\.npz.*are for 50x40"):
        src.detect(0, np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"absent\.npz"):
        PrecomputedProposals(tmp_path / "absent.npz")
    np.savez(tmp_path / "broken.npz", frame=np.zeros(1, np.int64), boxes=np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"broken\.npz.*missing key"):
        PrecomputedProposals(tmp_path / "broken.npz")
    np.savez(
        tmp_path / "shapes.npz",
        frame=np.zeros(2, np.int64),
        boxes=np.zeros((1, 4)),
        scores=np.zeros(2),
        masks=np.zeros((2, 28, 28)),
        mask_kind=np.array("box"),
        image_size=np.array([40, 50]),
    )
    with pytest.raises(ValueError, match=r"shapes\.npz.*inconsistent"):
        PrecomputedProposals(tmp_path / "shapes.npz")
    with pytest.raises(ValueError, match="one mask kind"):
        save_precomputed(
            tmp_path / "x.npz", [d0, OracleProposals(_labels()).detect(0, FRAME)], (40, 50)
        )


# ----------------------------------------------------------------------------- Mask R-CNN


@pytest.mark.slow
def test_maskrcnn_random_weights_small(tmp_path):
    torch.manual_seed(0)
    opts = dict(min_size=64, max_size=96, detections_per_img=10, rpn_post_nms_top_n_test=40)
    src = MaskRCNNProposals(None, **opts)
    frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    det = src.detect(0, frame)
    assert det.kind == "box" and det.masks.shape[1:] == (28, 28)
    assert det.boxes.shape == (len(det), 4) and len(det) <= 10
    assert (det.boxes[:, 2] <= 80).all() and (det.boxes[:, 3] <= 60).all()  # frame pixels
    assert ((det.masks >= 0) & (det.masks <= 1)).all()

    weights = tmp_path / "maskrcnn.pth"
    torch.save(src.model.state_dict(), weights)
    again = MaskRCNNProposals(weights, **opts)
    det2 = again.detect(0, frame)
    torch.testing.assert_close(det2.boxes, det.boxes)
    torch.testing.assert_close(det2.masks, det.masks)


@pytest.mark.slow
def test_maskrcnn_roi_levels_do_not_depend_on_the_first_frame():
    """torchvision infers its RoI poolers' level scales from the first image and keeps them;
    the source pins them to the FPN strides, so a thin first frame does not change later ones."""
    opts = dict(min_size=64, max_size=96, detections_per_img=10, rpn_post_nms_top_n_test=40)
    torch.manual_seed(0)
    src = MaskRCNNProposals(None, **opts)
    rh = src.model.roi_heads
    for pool in (rh.box_roi_pool, rh.mask_roi_pool):
        assert pool.scales == [0.25, 0.125, 0.0625, 0.03125]
    g = np.random.default_rng(1)
    frame = g.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    want = src.detect(0, frame)
    torch.manual_seed(0)
    other = MaskRCNNProposals(None, **opts)
    other.detect(0, g.integers(0, 255, (4, 200, 3), dtype=np.uint8))  # thin first frame
    got = other.detect(1, frame)
    torch.testing.assert_close(got.boxes, want.boxes)
    torch.testing.assert_close(got.masks, want.masks)


def test_maskrcnn_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="version"):
        MaskRCNNProposals(None, version="v3")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        MaskRCNNProposals(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="COCO_V1"):
        MaskRCNNProposals("NOT_A_WEIGHTS_NAME")
