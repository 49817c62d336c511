"""DMM-Net stages: configuration, shapes and dtypes, and the arithmetic of each stage."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmm_deploy.matching import dmm_match
from dmm_deploy.model import (
    ConvLSTMCell,
    Detections,
    DMMConfig,
    DMMNet,
    MatchingCost,
    RefineDecoder,
    RoIEmbedder,
    frame_to_input,
    mask_iou,
    mask_pyramid,
    match_proposals,
    merge_probabilities,
    pad_proposals,
    paste_box_masks,
    prepare_proposals,
    roi_align_mean,
    tight_boxes,
    to_probabilities,
)

SMALL = DMMConfig(backbone="resnet18", input_size=(65, 97), hidden_size=16)


@pytest.fixture(scope="module")
def small_net() -> DMMNet:
    torch.manual_seed(0)
    return DMMNet(SMALL).eval()


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_the_originals():
    cfg = DMMConfig()
    assert (cfg.backbone, cfg.input_size, cfg.hidden_size) == ("resnet101", (255, 448), 128)
    assert (cfg.n_grad, cfg.n_proj, cfg.lr) == (40, 5, 0.1)
    assert (cfg.score_weight, cfg.top_k, cfg.nms_iou, cfg.box_threshold) == (0.3, 50, 0.4, 0.4)
    assert (cfg.roi_size, cfg.roi_sampling_ratio) == (14, 2)
    assert cfg.skip_channels == (32, 64, 128, 128)
    assert cfg.lstm_channels == (128, 64, 32, 16)
    assert cfg.embedding_dim == 512
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.2


@pytest.mark.parametrize(
    ("field", "value", "exc"),
    [
        ("backbone", "vgg16", ValueError),
        ("input_size", (10, 448), ValueError),
        ("input_size", (255,), ValueError),
        ("hidden_size", 20, ValueError),
        ("n_grad", 0, ValueError),
        ("lr", -0.1, ValueError),
        ("lr", math.inf, ValueError),
        ("score_weight", 1.5, ValueError),
        ("refine", 1, TypeError),
        ("matcher_backend", "cuda", ValueError),
        ("std", (1.0, 0.0, 1.0), ValueError),
    ],
)
def test_config_rejects_bad_values(field, value, exc):
    with pytest.raises(exc, match=field):
        DMMConfig(**{field: value})


def test_config_replace_validates():
    cfg = DMMConfig().replace(backbone="resnet50", input_size=(np.int64(128), 256))
    assert cfg.backbone == "resnet50" and cfg.input_size == (128, 256)
    with pytest.raises(TypeError, match="nope"):
        DMMConfig().replace(nope=1)
    with pytest.raises(ValueError, match="top_k"):
        DMMConfig().replace(top_k=0)


# ----------------------------------------------------------------------------- encoder


def test_encoder_shapes_and_dtypes(small_net):
    x = torch.rand(1, 3, *SMALL.input_size)
    with torch.no_grad():
        match, skip = small_net.encoder(x)
    h, w = SMALL.input_size
    for i, s in enumerate((4, 8, 16, 32)):
        size = (math.ceil(h / s), math.ceil(w / s))
        assert match[i].shape == (1, SMALL.hidden_size, *size)
        assert skip[i].shape == (1, SMALL.skip_channels[i], *size)
        assert match[i].dtype == skip[i].dtype == torch.float32


def test_encoder_normalises_inside(small_net):
    enc = small_net.encoder
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = enc.backbone((x - enc.mean) / enc.std)[0]
        got = enc.match_heads[0](expected)
        match, _ = enc(x)
    torch.testing.assert_close(match[0], got)
    assert torch.allclose(enc.mean.flatten(), torch.tensor(SMALL.mean))
    assert "mean" not in enc.state_dict()  # not a checkpoint entry


def test_frame_to_input():
    frame = np.full((50, 80, 3), 255, np.uint8)
    frame[..., 1] = 0
    x = frame_to_input(frame, (32, 40))
    assert x.shape == (1, 3, 32, 40) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, 5, 5], torch.tensor([1.0, 0.0, 1.0]))


# ----------------------------------------------------------------------------- embeddings


def test_roi_embedder_shapes_and_constant_features():
    emb = RoIEmbedder(SMALL)
    c = 3
    consts = [torch.arange(c, dtype=torch.float32) + 10 * lvl for lvl in range(4)]
    feats = tuple(
        v.view(1, c, 1, 1).expand(1, c, math.ceil(64 / s), math.ceil(96 / s)).contiguous()
        for v, s in zip(consts, (4, 8, 16, 32), strict=True)
    )
    boxes = torch.tensor([[0.0, 0.0, 20.0, 30.0], [10.0, 5.0, 90.0, 60.0]])
    out = emb(feats, boxes)
    assert out.shape == (2, 4 * c) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.cat(consts))
    assert emb(feats, boxes[:0]).shape == (0, 4 * c)


def test_roi_embedder_uses_roi_align_14_sampling_2():
    from torchvision.ops import roi_align

    torch.manual_seed(1)
    feats = tuple(torch.randn(1, 5, math.ceil(64 / s), math.ceil(96 / s)) for s in (4, 8, 16, 32))
    boxes = torch.tensor([[3.0, 4.0, 50.0, 40.0]])
    out = RoIEmbedder(SMALL)(feats, boxes)
    lvl2 = roi_align(feats[2], [boxes], 14, 1 / 16, 2, aligned=False).mean(dim=(2, 3))
    torch.testing.assert_close(out[:, 10:15], lvl2)


@pytest.mark.parametrize("output_size, sampling", [(14, 2), (7, 3), (1, 1)])
def test_roi_align_mean_equals_roi_align_then_mean(output_size, sampling):
    """The matrix-product form equals torchvision's RoIAlign + mean over the grid, on boxes
    inside, across and outside the image, degenerate (zero width, sub-pixel height), the whole
    image, and boxes of several images."""
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    for b, h, w, scale in [(1, 16, 28, 1 / 4), (2, 8, 14, 1 / 32), (3, 5, 7, 1 / 16)]:
        feat = torch.randn(b, 6, h, w, generator=g)
        big_h, big_w = h / scale, w / scale
        n = 80
        x1 = torch.rand(n, generator=g) * big_w * 1.4 - 0.2 * big_w
        y1 = torch.rand(n, generator=g) * big_h * 1.4 - 0.2 * big_h
        bw = torch.rand(n, generator=g) * big_w * 0.8
        bh = torch.rand(n, generator=g) * big_h * 0.8
        bw[:8] = 0.0
        bh[8:16] = 0.3
        boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], 1)
        boxes[16:20] = torch.tensor([0.0, 0.0, big_w - 1, big_h - 1])
        boxes[20:24] = torch.tensor([big_w - 1, big_h - 1, big_w + 40, big_h + 40])
        boxes[24:28] = torch.tensor([-90.0, -90.0, -60.0, -60.0])  # wholly outside: zeros
        index = torch.randint(0, b, (n,), generator=g)
        rois = torch.cat([index[:, None].float(), boxes], 1)
        want = roi_align(feat, rois, output_size, scale, sampling, aligned=False).mean((2, 3))
        got = roi_align_mean(feat, boxes, index, output_size, scale, sampling)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert got[24:28].abs().max() == 0


def test_roi_embedder_separable_equals_roi_align():
    torch.manual_seed(2)
    feats = tuple(torch.randn(2, 5, math.ceil(64 / s), math.ceil(96 / s)) for s in (4, 8, 16, 32))
    boxes = torch.tensor([[3.0, 4.0, 50.0, 40.0], [0.0, 0.0, 95.0, 63.0], [60.0, 1.0, 61.0, 2.0]])
    index = torch.tensor([1, 0, 1])
    emb = RoIEmbedder(SMALL)
    want = emb(feats, boxes, index)
    torch.testing.assert_close(emb(feats, boxes, index, separable=True), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        emb(feats, boxes[:1], separable=True), emb(feats, boxes[:1]), rtol=0, atol=1e-5
    )
    assert emb(feats, boxes[:0], separable=True).shape == (0, 20)


def test_tight_boxes():
    m = torch.zeros(3, 10, 12)
    m[0, 2:5, 3:9] = 0.9
    m[1, 7, 11] = 0.5
    m[2, 0, 0] = 0.3  # below the threshold: empty
    boxes, nonempty = tight_boxes(m, 0.4)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[3, 2, 8, 4], [11, 7, 11, 7], [0, 0, 11, 9]]
    assert nonempty.tolist() == [True, True, False]


# ----------------------------------------------------------------------------- cost, matching


def test_mask_iou():
    a = torch.zeros(2, 4, 4)
    a[0, :2] = 0.9
    a[1] = 0.2  # below 0.5: empty
    b = torch.zeros(2, 4, 4)
    b[0, :1] = 0.6
    b[1, :, :2] = 0.7
    iou = mask_iou(a, b)
    assert iou.shape == (2, 2)
    torch.testing.assert_close(iou[0], torch.tensor([4 / 8, 4 / 12]), atol=1e-5, rtol=0)
    torch.testing.assert_close(iou[1], torch.zeros(2))


def test_matching_cost_formula_and_gradient():
    cost_fn = MatchingCost(SMALL)
    torch.manual_seed(2)
    tmpl = torch.randn(2, 6, requires_grad=True)
    emb = torch.randn(3, 6)
    prev = torch.rand(2, 5, 5, requires_grad=True)
    props = torch.rand(3, 5, 5)
    cost = cost_fn(tmpl, emb, prev, props)
    assert cost.shape == (2, 3) and cost.dtype == torch.float32
    cos = F.cosine_similarity(tmpl[:, None], emb[None], dim=2)
    expected = -(0.7 * cos + 0.3 * mask_iou(prev, props))
    torch.testing.assert_close(cost, expected)
    cost.sum().backward()
    assert tmpl.grad is not None and prev.grad is None  # the IoU term has no gradient


def test_pad_proposals():
    cost = torch.randn(3, 2)
    masks = torch.rand(2, 4, 4)
    c, m = pad_proposals(cost, masks)
    assert c.shape == (3, 4) and m.shape == (4, 4, 4)
    assert torch.equal(c[:, :2], cost) and not c[:, 2:].any() and not m[2:].any()
    c2, m2 = pad_proposals(torch.randn(2, 3), torch.rand(3, 4, 4))
    assert c2.shape == (2, 3) and m2.shape == (3, 4, 4)
    c3, m3 = pad_proposals(torch.randn(2, 0), torch.rand(0, 4, 4))
    assert c3.shape == (2, 3) and m3.shape == (3, 4, 4) and not c3.any()


def test_match_proposals_readout_and_masks():
    cost = -torch.tensor([[0.9, 0.1, 0.2, 0.0], [0.1, 0.2, 0.8, 0.3]])
    masks = torch.rand(4, 6, 7)
    res = match_proposals(cost, masks, SMALL)
    x = dmm_match(cost, "greedy", n_grad=40, n_proj=5, lr=0.1, backend="torch")
    torch.testing.assert_close(res.assignment, x)
    assert res.index.tolist() == [0, 2]
    assert (res.hard > 0).sum(dim=1).tolist() == [1, 1]
    torch.testing.assert_close(res.matched[0], x[0, 0] * masks[0])
    torch.testing.assert_close(res.matched[1], x[1, 2] * masks[2])
    assert torch.equal(res.selected, masks[[0, 2]])
    assert res.matched.shape == res.selected.shape == (2, 6, 7)


def test_match_proposals_padding_gives_minus_one_and_empty_mask():
    # one proposal, two objects: the cost is padded to O + 1 = 3 columns; the poorly
    # matching object takes a zero-cost padding column (two tied: both kept, index -1)
    cost = -torch.tensor([[0.9], [0.2]])
    masks = torch.ones(1, 3, 3)
    res = match_proposals(cost, masks, SMALL)
    assert res.assignment.shape == res.hard.shape == (2, 3)
    assert res.index.tolist() == [0, -1]
    assert (res.hard[1] > 0).tolist() == [False, True, True]
    assert not res.selected[1].any() and not res.matched[1].any()
    assert res.selected[0].min() == 1


# ----------------------------------------------------------------------------- decoder


def test_mask_pyramid_sizes():
    levels = mask_pyramid(torch.rand(2, 3, 65, 97))
    sizes = [tuple(t.shape[-2:]) for t in levels]
    assert sizes == [(3, 4), (5, 7), (9, 13), (17, 25)]
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 10, 10] = 1
    assert all(t.max() == 1 for t in mask_pyramid(x))  # max pooling keeps a lone pixel


def test_decoder_shapes_and_state(small_net):
    x = torch.rand(1, 3, *SMALL.input_size)
    with torch.no_grad():
        _, skip = small_net.encoder(x)
        dec = small_net.decoder
        z = dec.zero_state(skip)
        masks = torch.rand(1, 3, *SMALL.input_size)
        logits, h, c = dec(skip, masks, z, z, z)
    assert [t.shape[1] for t in z] == list(SMALL.lstm_channels)
    assert [tuple(t.shape[-2:]) for t in z] == [tuple(f.shape[-2:]) for f in skip[::-1]]
    assert logits.shape == (1, 1, 2 * 17, 2 * 25) and logits.dtype == torch.float32
    assert all(a.shape == b.shape for a, b in zip(h, z, strict=True))
    assert all(a.shape == b.shape for a, b in zip(c, z, strict=True))
    p = to_probabilities(logits, SMALL.input_size)
    assert p.shape == (1, *SMALL.input_size) and p.min() >= 0 and p.max() <= 1


def _decoder_and_inputs(seed: int, batch: int, size: tuple[int, int]):
    """A small random decoder and random inputs: ``dec, (skip, masks, h, c, h_temporal)``."""
    torch.manual_seed(seed)
    cfg = DMMConfig(backbone="resnet18", input_size=size, hidden_size=16)
    dec = RefineDecoder(cfg)
    skip = tuple(
        torch.randn(batch, c, size[0] // s, size[1] // s)
        for c, s in zip(cfg.skip_channels, (4, 8, 16, 32), strict=True)
    )
    h = tuple(torch.randn_like(t) for t in dec.zero_state(skip))
    c = tuple(torch.randn_like(t) for t in h)
    ht = tuple(torch.randn_like(t) for t in h)
    return dec, (skip, torch.rand(batch, 3, *size), h, c, ht)


def test_decoder_averages_three_passes():
    """The batched three-pass cell equals three separate cell calls averaged."""
    dec, (skip, masks, h, c, ht) = _decoder_and_inputs(3, 1, (64, 64))
    _, h_out, c_out = dec(skip, masks, h, c, ht)

    pyr = mask_pyramid(masks)
    cell: ConvLSTMCell = dec.cells[0]
    states = [cell(skip[3], pyr[0][:, k : k + 1], h[0], c[0], ht[0]) for k in range(3)]
    torch.testing.assert_close(h_out[0], sum(s[0] for s in states) / 3)
    torch.testing.assert_close(c_out[0], sum(s[1] for s in states) / 3)


def test_decoder_shared_gates_equal_the_three_repeated_runs():
    """The exported decoder's form (the gates' convolution over the shared inputs once per
    object) equals the literal three repeated runs up to float rounding, for several objects."""
    dec, inputs = _decoder_and_inputs(4, 3, (64, 96))
    want = dec(*inputs)
    got = dec(*inputs, shared_gates=True)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    for a, b in zip((*got[1], *got[2]), (*want[1], *want[2]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_convlstm_cell_gate_order():
    cell = ConvLSTMCell(2, 3)
    assert cell.gates.in_channels == 2 + 1 + 6 and cell.gates.out_channels == 12
    with torch.no_grad():
        cell.gates.weight.zero_()
        cell.gates.bias.copy_(torch.tensor([9.0] * 3 + [-9.0] * 3 + [9.0] * 3 + [0.5] * 3))
    x = torch.zeros(1, 2, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    state = torch.full((1, 3, 4, 4), 2.0)
    h, c = cell(x, m, state, state, state)
    # input gate open, forget gate closed: c = tanh(0.5); h = tanh(c)
    torch.testing.assert_close(c, torch.full_like(c, math.tanh(0.5)), atol=1e-3, rtol=0)
    torch.testing.assert_close(h, torch.tanh(c), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- merge


def test_merge_probabilities():
    probs = torch.tensor([[[0.9, 0.2, 0.6]], [[0.3, 0.1, 0.7]]])  # (2, 1, 3)
    ids = torch.tensor([5, 2], dtype=torch.uint8)
    labels = merge_probabilities(probs, ids)
    # background: 1 - max = [0.1, 0.8, 0.3]
    assert labels.tolist() == [[5, 0, 2]] and labels.dtype == torch.uint8
    assert merge_probabilities(probs[:0], ids[:0]).tolist() == [[0, 0, 0]]


# ----------------------------------------------------------------------------- proposals


def test_paste_box_masks():
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[10.0, 5.0, 37.0, 32.0], [-20.0, -20.0, 5.0, 5.0]])
    out = paste_box_masks(masks, boxes, (40, 50))
    assert out.shape == (2, 40, 50) and out.dtype == torch.float32
    on = out[0] > 0.5
    ys, xs = on.nonzero(as_tuple=True)
    got = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    assert (got - boxes[0]).abs().max() <= 1  # the 1-pixel zero padding blurs the edge
    assert out[1, :5, :5].min() > 0.5 and not out[1, 10:].any()  # clipped at the border


def test_prepare_proposals_nms_topk_and_order():
    h0, w0 = 60, 80
    masks = np.zeros((5, h0, w0), np.float32)
    masks[0, 10:30, 10:30] = 0.9  # kept
    masks[1, 11:31, 10:30] = 0.9  # duplicate of 0 with a lower score: suppressed
    masks[2, 40:50, 50:70] = 0.9  # kept
    masks[3, 0:5, 0:5] = 0.3  # below box_threshold everywhere: dropped
    masks[4, 40:55, 5:20] = 0.9  # kept, lowest score
    scores = np.array([0.8, 0.5, 0.9, 1.0, 0.1], np.float32)
    det = Detections(np.zeros((5, 4)), scores, masks, "frame")
    cfg = DMMConfig(backbone="resnet18", input_size=(h0, w0), hidden_size=16)
    props = prepare_proposals(det, (h0, w0), cfg)
    assert props.boxes.shape == (3, 4) and props.masks.shape == (3, h0, w0)
    assert props.scores.tolist() == pytest.approx([0.9, 0.8, 0.1])
    assert props.boxes[1].tolist() == [10, 10, 29, 29]
    top2 = prepare_proposals(det, (h0, w0), cfg.replace(top_k=2))
    assert top2.scores.tolist() == pytest.approx([0.9, 0.8])


def test_prepare_proposals_box_kind_and_resize():
    det = Detections(
        torch.tensor([[20.0, 10.0, 59.0, 49.0]]), torch.tensor([0.7]), torch.ones(1, 28, 28), "box"
    )
    cfg = DMMConfig(backbone="resnet18", input_size=(50, 40), hidden_size=16)
    props = prepare_proposals(det, (100, 80), cfg)  # frame 100 x 80 -> input 50 x 40
    assert props.masks.shape == (1, 50, 40)
    assert props.boxes[0].tolist() == [10, 5, 29, 24]
    empty = prepare_proposals(Detections.empty(), (100, 80), cfg)
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 50, 40)


def test_detections_validation():
    with pytest.raises(ValueError, match="kind"):
        Detections(np.zeros((1, 4)), np.zeros(1), np.zeros((1, 28, 28)), "mask")
    with pytest.raises(ValueError, match="scores"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="square"):
        Detections(np.zeros((1, 4)), np.zeros(1), np.zeros((1, 28, 20)), "box")
    with pytest.raises(ValueError, match="frame size"):
        prepare_proposals(
            Detections(np.zeros((1, 4)), np.ones(1), np.ones((1, 10, 10)), "frame"), (20, 20), SMALL
        )


def test_dmmnet_container(small_net):
    assert isinstance(small_net.cost, MatchingCost)
    with pytest.raises(RuntimeError, match="container"):
        small_net(torch.zeros(1))
    with pytest.raises(TypeError, match="cfg"):
        DMMNet({"backbone": "resnet18"})


# ----------------------------------------------------------------------------- export


class _Flat(torch.nn.Module):
    """Flattens a stage's tuple arguments and results for the exporter."""

    def __init__(self, stage: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.stage, self.kind = stage, kind

    def forward(self, *args):
        if self.kind == "embedder":
            return self.stage(args[:4], args[4])
        logits, h, c = self.stage(args[:4], args[4], args[5:9], args[9:13], args[13:17])
        return (logits, *h, *c)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_stages_export_to_onnx(small_net):
    """Embedder, cost and decoder step are tensors-in/tensors-out graphs that onnxruntime runs."""
    import io

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    x = torch.rand(1, 3, *SMALL.input_size)
    with torch.no_grad():
        match, skip = small_net.encoder(x)
    z = small_net.decoder.zero_state(skip)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [10.0, 10.0, 60.0, 50.0]])
    d = SMALL.embedding_dim
    cases = [
        (_Flat(small_net.embedder, "embedder"), (*match, boxes)),
        (
            small_net.cost,
            (torch.randn(2, d), torch.randn(3, d), torch.rand(2, 65, 97), torch.rand(3, 65, 97)),
        ),
        (_Flat(small_net.decoder, "decoder"), (*skip, torch.rand(1, 3, 65, 97), *z, *z, *z)),
    ]
    for module, args in cases:
        module.eval()
        buf = io.BytesIO()
        torch.onnx.export(module, args, buf, opset_version=17, dynamo=False)
        onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
        sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
        got = sess.run(None, feeds)
        with torch.no_grad():
            ref = module(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r.numpy(), atol=1e-5, rtol=1e-4)
