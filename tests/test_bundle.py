"""Bundle export and the runtime against the torch model: per stage and end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from dmm_deploy.data import read_frame, read_mask  # noqa: E402
from dmm_deploy.export.bundle import TRT_VERSIONS, export_bundle  # noqa: E402
from dmm_deploy.export.bundle_stages import STAGE_IO, MatchStage, batched_cost  # noqa: E402
from dmm_deploy.model import (  # noqa: E402
    Detections,
    DMMConfig,
    DMMNet,
    PrecomputedProposals,
    VideoSegmenter,
)
from dmm_deploy.model.matching import MatchingCost, match_proposals  # noqa: E402
from dmm_deploy.model.sources import save_precomputed  # noqa: E402
from dmm_deploy.runtime import Runtime, StreamingSegmenter, StreamState, step_streams  # noqa: E402
from dmm_deploy.runtime.proposals import PrecomputedDetections  # noqa: E402

CFG = DMMConfig(backbone="resnet18", input_size=(96, 160))
VIDEOS = {"bike": [0], "judo": [0, 8, 13]}  # judo's 00005.png is mis-sized


def random_detections(n_frames: int, size, seed: int = 0, n: int = 15) -> list[Detections]:
    """Mask R-CNN-like box-relative detections (blobs in random boxes), seeded per frame."""
    h, w = size
    out = []
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    for i in range(n_frames):
        g = np.random.default_rng((seed, i))
        xy = g.uniform(0, 1, (n, 2)) * [w * 0.8, h * 0.8]
        wh = g.uniform(0.05, 0.4, (n, 2)) * [w, h]
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        masks = []
        for _ in range(n):
            c, r = g.uniform(0.3, 0.7, 2), g.uniform(0.2, 0.5, 2)
            masks.append(np.clip(1.2 - ((xx - c[0]) / r[0]) ** 2 - ((yy - c[1]) / r[1]) ** 2, 0, 1))
        scores = g.uniform(0, 1, n).astype(np.float32)
        out.append(Detections(boxes, scores, np.stack(masks).astype(np.float32), "box"))
    return out


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DMMNet(CFG).eval()


@pytest.fixture(scope="module")
def bundle(net, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    reports = export_bundle(net, out, log=lambda s: None)
    return out, reports


@pytest.fixture(scope="module")
def videos(shared_dir, tmp_path_factory):
    root = shared_dir / "data" / "vos_samples"
    tmp = tmp_path_factory.mktemp("props")
    out = {}
    for name, ann_idx in VIDEOS.items():
        frames = sorted((root / "images" / name).glob("*.jpg"))
        size = read_frame(frames[0]).shape[:2]
        npz = tmp / f"{name}.npz"
        save_precomputed(npz, random_detections(len(frames), size), size)
        anns = {i: read_mask(root / "masks" / name / f"{i:05d}.png") for i in ann_idx}
        out[name] = (frames, anns, npz)
    return out


def test_manifest_describes_every_stage(bundle, net):
    out, reports = bundle
    m = json.loads((out / "manifest.json").read_text())
    assert m["version"] == 1 and m["format"] == "dmm-deploy-bundle"
    assert m["config"]["backbone"] == "resnet18" and m["input_size"] == [96, 160]
    assert m["precision"] == "fp32" and m["proposals"] == {"kind": "precomputed"}
    assert set(m["stages"]) == {"encoder", "embed", "match", "decoder"}
    for name, st in m["stages"].items():
        assert [t["name"] for t in st["inputs"]] == list(STAGE_IO[name][0])
        assert [t["name"] for t in st["outputs"]] == list(STAGE_IO[name][1])
        assert st["inputs"][0]["shape"][0] in ("B", "N")  # batch axes stay dynamic
        assert len(st["sha256"]) == 64 and (out / st["file"]).is_file()
    assert m["stages"]["match"]["inputs"][4] == {
        "name": "sizes",
        "dtype": "int64",
        "shape": ["B", 2],
    }
    assert {"torch", "onnx", "onnxruntime", "dmm_deploy"} <= set(m["versions"])
    for rep in reports:
        assert all(rep.tensorrt[v] == [] for v in TRT_VERSIONS), rep.tensorrt
        assert rep.parity_max_abs <= 1e-4 * max(1.0, rep.parity_scale), rep


def test_batched_cost_is_the_model_cost_per_problem(net):
    g = torch.Generator().manual_seed(0)
    t, e = torch.randn(3, 4, 64, generator=g), torch.randn(3, 7, 64, generator=g)
    a, b = torch.rand(3, 4, 20, 30, generator=g), torch.rand(3, 7, 20, 30, generator=g)
    got = batched_cost(t, e, a, b, CFG.score_weight, CFG.mask_threshold)
    cost = MatchingCost(CFG)
    for i in range(3):
        torch.testing.assert_close(got[i], cost(t[i], e[i], a[i], b[i]), rtol=0, atol=1e-6)


def test_padded_match_batch_equals_each_problem_alone(net):
    """The match stage over a padded batch (sizes) = match_proposals on each problem."""
    g = torch.Generator().manual_seed(1)
    h, w = CFG.input_size
    problems = [(2, 6), (4, 3), (1, 1)]  # (objects, proposals); 4 > 3 and 1 = 1 get padded
    stage = MatchStage(net)
    rows = []
    for o, p in problems:
        m = p if p > o else o + 1
        tm, em = torch.randn(o, CFG.embedding_dim, generator=g), torch.zeros(m, CFG.embedding_dim)
        em[:p] = torch.randn(p, CFG.embedding_dim, generator=g)
        prev = (torch.rand(o, h, w, generator=g) > 0.5).float()
        pm = torch.zeros(m, h, w)
        pm[:p] = torch.rand(p, h, w, generator=g)
        rows.append((tm, em, prev, pm, o, m, p))
    omax, mmax = max(r[4] for r in rows), max(r[5] for r in rows)
    pad = lambda x, n: torch.cat([x, x.new_zeros(n - x.shape[0], *x.shape[1:])])  # noqa: E731
    args = (
        torch.stack([pad(r[0], omax) for r in rows]),
        torch.stack([pad(r[1], mmax) for r in rows]),
        torch.stack([pad(r[2], omax) for r in rows]),
        torch.stack([pad(r[3], mmax) for r in rows]),
        torch.tensor([[r[4], r[5]] for r in rows]),
    )
    x, matched = stage(*args)
    for b, (tm, em, prev, pm, o, m, p) in enumerate(rows):
        cost = net.cost(tm, em[:p], prev, pm[:p])
        want = match_proposals(cost, pm[:p], CFG.replace(matcher_backend="torch"))
        torch.testing.assert_close(x[b, :o, :m], want.assignment, atol=1e-6, rtol=0)
        torch.testing.assert_close(matched[b, :o], want.matched, atol=1e-5, rtol=0)
        assert float(x[b, o:].abs().sum() + x[b, :, m:].abs().sum()) == 0.0


def test_stage_outputs_match_torch_in_onnxruntime(bundle, net):
    """Per stage, fresh inputs: onnxruntime (CPU, fp32) within 1e-4 (relative to the output
    scale when above 1) of the torch stage modules."""
    from dmm_deploy.export.bundle import _example_inputs, _module

    rt = Runtime.open(bundle[0], threads=1)
    for name in ("encoder", "embed", "match", "decoder"):
        args = _example_inputs(net, name, batch=2, seed=7)
        with torch.no_grad():
            want = _module(net, name)(*args)
        want = want if isinstance(want, tuple) else (want,)
        got = rt.run(name, {k: a.numpy() for k, a in zip(STAGE_IO[name][0], args, strict=True)})
        for out_name, wt in zip(STAGE_IO[name][1], want, strict=True):
            wt = wt.numpy()
            tol = 1e-4 * max(1.0, float(np.abs(wt).max()))
            np.testing.assert_allclose(
                got[out_name], wt, atol=tol, rtol=0, err_msg=f"{name}.{out_name}"
            )


def _agreement(net, bundle_dir, video, threads=1):
    frames, anns, npz = video
    ref = list(VideoSegmenter(net, PrecomputedProposals(npz)).segment(frames, anns[0], anns))
    rt = Runtime.open(bundle_dir, threads=threads)
    got = list(StreamingSegmenter(rt, rt.proposal_source(npz)).segment(frames, anns[0], anns))
    return ref, got, [float((a == b).mean()) for a, b in zip(ref, got, strict=True)]


@pytest.mark.parametrize("video", ["bike", "judo"])
def test_label_maps_match_the_video_segmenter(bundle, net, videos, video):
    ref, got, agree = _agreement(net, bundle[0], videos[video])
    assert min(agree) >= 0.999, agree
    assert [np.unique(a).tolist() for a in got] == [np.unique(a).tolist() for a in ref]


def test_streams_batched_together_equal_each_stream_alone(bundle, videos):
    """step_streams over two videos at once (different objects, frame sizes, late objects)
    gives what each video gives alone."""
    rt = Runtime.open(bundle[0], threads=1)
    names = ["bike", "judo"]
    alone = {}
    for n in names:
        frames, anns, npz = videos[n]
        seg = StreamingSegmenter(rt, PrecomputedDetections(npz))
        alone[n] = list(seg.segment(frames[:4], anns[0], anns))
    states = [StreamState(PrecomputedDetections(videos[n][2])) for n in names]
    for i in range(4):
        images = [read_frame(videos[n][0][i]) for n in names]
        anns = [videos[n][1].get(i) for n in names]
        labels = step_streams(rt, states, images, anns)
        for n, lab in zip(names, labels, strict=True):
            assert float((lab == alone[n][i]).mean()) >= 0.9999


def test_matching_only_bundle(net, videos, tmp_path):
    net2 = DMMNet(CFG.replace(refine=False)).eval()
    net2.load_state_dict(net.state_dict())
    export_bundle(net2, tmp_path, log=lambda s: None)
    assert not (tmp_path / "decoder.onnx").exists()
    _, _, agree = _agreement(net2, tmp_path, videos["bike"])
    assert min(agree) >= 0.999, agree


@pytest.mark.slow
def test_resnet50_at_full_input_size(videos, tmp_path):
    torch.manual_seed(1)
    net = DMMNet(DMMConfig(backbone="resnet50", input_size=(255, 448))).eval()
    export_bundle(net, tmp_path, log=lambda s: None)
    _, _, agree = _agreement(net, tmp_path, videos["bike"])
    assert min(agree) >= 0.999, agree


def test_export_refuses_unknown_options(net, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        export_bundle(net, tmp_path, precision="int8")
    with pytest.raises(ValueError, match="proposals"):
        export_bundle(net, tmp_path, proposals="yolo")


def test_runtime_reads_the_model_npz_format(videos):
    frames, _, npz = videos["bike"]
    image = read_frame(frames[1])
    a = PrecomputedProposals(npz).detect(1, image)
    b = PrecomputedDetections(npz).detect(1, image)
    np.testing.assert_array_equal(a.boxes.numpy(), b.boxes)
    np.testing.assert_array_equal(a.masks.numpy(), b.masks)
    with pytest.raises(ValueError, match=str(Path(npz).name)):
        PrecomputedDetections(npz).detect(0, image[:10])


def test_export_model_job_arguments(tmp_path):
    import argparse

    from dmm_deploy.export import bundle_job

    parser = argparse.ArgumentParser()
    bundle_job.add_args(parser)
    args = parser.parse_args(["--out", str(tmp_path / "b")])
    with pytest.raises(ValueError, match="--random-weights"):
        bundle_job.run(args)
    args = parser.parse_args(
        ["--out", str(tmp_path / "b"), "--random-weights", "--input-size", "9"]
    )
    with pytest.raises(ValueError, match="--input-size"):
        bundle_job.run(args)
    args = parser.parse_args(["--out", str(tmp_path), "--checkpoint", str(tmp_path / "nope")])
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        bundle_job.run(args)


def test_export_model_refuses_what_it_would_lose_or_ignore(tmp_path):
    import argparse

    from dmm_deploy.export import bundle_job

    parser = argparse.ArgumentParser()
    bundle_job.add_args(parser)
    base = ["--random-weights", "--backbone", "resnet18", "--input-size", "64x64"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "manifest.json").write_text("my own file")
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": "dmm-deploy-bundle"}))
    cases = [
        (["--out", str(notes)], r"--out .*notes is not empty and holds no bundle"),
        (["--out", str(old)], r"--out .*old holds a bundle: pass --overwrite"),
        (["--out", ""], r"--out must name a folder"),
        (["--out", str(tmp_path / "b"), "--maskrcnn-weights", "x.pth"], r"--maskrcnn-weights applies only with --proposals maskrcnn"),
        (["--out", str(tmp_path / "b"), "--detector-size", "100000"], r"--detector-size applies only"),
        (["--out", str(tmp_path / "b"), "--proposals", "maskrcnn", "--detector-size", "32"], r"--detector-size must be in 64\.\.2048"),
        (["--out", str(tmp_path / "b"), "--threads", "100000"], r"--threads must be in 1\.\.256"),
        (["--out", str(tmp_path / "b"), "--input-size", "20000x20000"], r"--input-size must be at most 2048x2048"),
        (["--out", str(tmp_path / "b"), "--seed", str(2**70)], r"--seed must be in 0\.\.2\*\*63-1"),
    ]  # fmt: skip
    for extra, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            bundle_job.run(parser.parse_args([*base, *extra]))
    assert (notes / "manifest.json").read_text() == "my own file"


def test_export_model_unusable_maskrcnn_weights_are_one_line(tmp_path):
    import argparse

    from dmm_deploy.export import bundle_job

    parser = argparse.ArgumentParser()
    bundle_job.add_args(parser)
    garbage = tmp_path / "mrcnn.pth"
    garbage.write_bytes(b"not a checkpoint")
    argv = ["--out", str(tmp_path / "b"), "--random-weights", "--backbone", "resnet18",
            "--input-size", "64x64", "--proposals", "maskrcnn", "--detector-size", "64",
            "--maskrcnn-weights", str(garbage)]  # fmt: skip
    with pytest.raises(ValueError, match=r"--maskrcnn-weights .*mrcnn\.pth: not usable") as e:
        bundle_job.run(parser.parse_args(argv))
    assert "\n" not in str(e.value) and not (tmp_path / "b").exists()


def test_export_model_replaces_a_bundle_only_after_a_successful_export(tmp_path, monkeypatch):
    """The new bundle is written beside --out and moved in place at the end: a failed or
    interrupted export leaves the earlier bundle as it was, and no temporary folder."""
    import argparse

    from dmm_deploy.export import bundle, bundle_job

    parser = argparse.ArgumentParser()
    bundle_job.add_args(parser)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "dmm-deploy-bundle", "v": "old"}))
    (out / "engines").mkdir()
    argv = ["--out", str(out), "--overwrite", "--random-weights", "--backbone", "resnet18",
            "--input-size", "64x64", "--matching-only"]  # fmt: skip

    def failing(net, dest, **kw):
        (Path(dest) / "encoder.onnx").write_text("half written")
        raise bundle.BundleExportError("encoder: parity 1 exceeds 1e-4")

    def interrupted(net, dest, **kw):
        (Path(dest) / "encoder.onnx").write_text("half written")
        raise KeyboardInterrupt

    def working(net, dest, **kw):
        (Path(dest) / "manifest.json").write_text(json.dumps({"format": "dmm-deploy-bundle"}))

    monkeypatch.setattr(bundle, "export_bundle", failing)
    assert bundle_job.run(parser.parse_args(argv)) == 1
    monkeypatch.setattr(bundle, "export_bundle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bundle_job.run(parser.parse_args(argv))
    assert json.loads((out / "manifest.json").read_text())["v"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary left
    monkeypatch.setattr(bundle, "export_bundle", working)
    assert bundle_job.run(parser.parse_args(argv)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # the old engines too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    # "--out ." (the current folder, empty): filled in place, the folder itself stays
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = here.stat().st_ino
    dot = [a if a != str(out) else "." for a in argv if a != "--overwrite"]
    assert bundle_job.run(parser.parse_args(dot)) == 0
    assert sorted(p.name for p in here.iterdir()) == ["manifest.json"]
    assert here.stat().st_ino == inode and sorted(p.name for p in tmp_path.iterdir()) == [
        "bundle",
        "here",
    ]


def test_export_model_config_follows_compat_and_matching(tmp_path):
    """--compat defaults to the original's pipeline with --checkpoint (as segment does),
    to this project's otherwise; --matching is passed through."""
    import argparse

    from dmm_deploy.export import bundle_job

    parser = argparse.ArgumentParser()
    bundle_job.add_args(parser)
    base = ["--out", str(tmp_path / "b"), "--backbone", "resnet18"]
    cfg = bundle_job.model_config(parser.parse_args([*base, "--random-weights"]), (96, 160))
    assert cfg.compat == "default" and cfg.matching == "dmm" and cfg.merge_at == "frame"
    args = parser.parse_args([*base, "--checkpoint", "ckpt", "--matching", "exact"])
    cfg = bundle_job.model_config(args, (96, 160))
    assert cfg.compat == "original" and cfg.matching == "exact" and cfg.merge_at == "input"
    args = parser.parse_args([*base, "--checkpoint", "ckpt", "--compat", "default"])
    assert bundle_job.model_config(args, (96, 160)).compat == "default"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--matching", "greedy"])


def test_build_segmenter_runs_a_bundle(bundle, videos):
    from types import SimpleNamespace

    from dmm_deploy.runtime.jobs import build_segmenter

    frames, anns, npz = videos["bike"]
    opts = SimpleNamespace(
        bundle=bundle[0],
        backend="onnxruntime",
        device="cpu",
        proposals="precomputed",
        precomputed=npz,
        threads=1,
    )
    labels = list(build_segmenter(opts).segment(frames[:2], anns[0]))
    assert len(labels) == 2 and labels[1].shape == anns[0].shape


@pytest.mark.slow
def test_maskrcnn_bundle_runs_the_exported_detector(videos, tmp_path):
    """The proposals stage (torchvision Mask R-CNN in ONNX, random weights, small detector)
    against the torch pipeline with the same detector."""
    from dmm_deploy.model import MaskRCNNProposals

    torch.manual_seed(3)
    net = DMMNet(CFG).eval()
    source = MaskRCNNProposals(
        None, min_size=160, max_size=267, detections_per_img=20, rpn_post_nms_top_n_test=100
    )
    export_bundle(net, tmp_path, proposals="maskrcnn", detector=source.model, log=lambda s: None)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["proposals"]["kind"] == "maskrcnn"
    assert manifest["proposals"]["layout"] == "split"
    assert {"detector", "proposals"} <= set(manifest["stages"])
    # both detector graphs are TensorRT-clean (the export raises otherwise; checked again here)
    from dmm_deploy.export.tensorrt_compat import check_tensorrt

    for name in ("detector", "proposals"):
        graph = onnx.load(str(tmp_path / f"{name}.onnx"))
        ops = {n.op_type for n in graph.graph.node}
        assert not ops & {"Loop", "If", "NonZero", "Scan"}, (name, ops)
        for v in TRT_VERSIONS:
            assert check_tensorrt(graph, v) == [], (name, v)
        assert manifest["stages"][name]["precision"] == "fp32"
    # only the image's spatial axes are dynamic in the heads' outputs
    shapes = [o["shape"] for o in manifest["stages"]["proposals"]["outputs"]]
    assert all(isinstance(d, int) for s in shapes for d in s), shapes
    frames, anns, _ = videos["bike"]
    ref = list(VideoSegmenter(net, source).segment(frames[:3], anns[0]))
    rt = Runtime.open(tmp_path, threads=1)
    # the encoder gives the shared arena's free memory back before the detector runs
    assert [n for n, r in rt.runners.items() if r.run_options is not None] == ["encoder"]
    got = list(StreamingSegmenter(rt).segment(frames[:3], anns[0]))
    agree = [float((a == b).mean()) for a, b in zip(ref, got, strict=True)]
    # a random detector's near-equal scores may order a few detections differently
    assert min(agree) >= 0.95, agree


def test_detector_settings_beyond_tensorrt_limits_are_refused():
    from dmm_deploy.export.bundle_stages import TOPK_MAX, check_tensorrt_limits

    check_tensorrt_limits(1000, 1000, 100)
    for args, name in (
        ((TOPK_MAX, 1000, 100), "pre_nms_top_n"),
        ((1000, 5000, 100), "post_nms_top_n"),
        ((1000, 1000, 0), "detections_per_img"),
    ):
        with pytest.raises(ValueError, match=f"{name} = .*TensorRT's TopK limit"):
            check_tensorrt_limits(*args)


def _pyramid(hp: int, wp: int, channels: int, gen) -> list:
    """FPN-like levels of stride 4..32 over a padded image of ``hp x wp``."""
    return [torch.randn(1, channels, hp >> (k + 2), wp >> (k + 2), generator=gen) for k in range(4)]


def _clipped_boxes(h: int, w: int, n: int, gen):
    """Random boxes clipped to an ``h x w`` image (many small, some large) plus the hard ones:
    the whole image, boxes touching the right/bottom edges, sub-pixel boxes at the corner."""
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h])
    wh = torch.rand(n, 2, generator=gen) ** 3 * torch.tensor([w, h])
    hard = [
        [0, 0, w, h], [w - 1, h - 1, w, h], [w - 0.5, 0, w, 3], [0, h - 2, 2, h],
        [w / 2, h / 2, w, h], [0, 0, w, 10], [w - 300, h - 300, w, h], [w - 130, h - 120, w, h],
    ]  # fmt: skip
    b = torch.cat([torch.cat([xy, xy + wh], 1), torch.tensor(hard, dtype=torch.float32)])
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    b[:, 2] = torch.maximum(b[:, 2], b[:, 0] + 0.01).clamp(max=w)
    b[:, 3] = torch.maximum(b[:, 3], b[:, 1] + 0.01).clamp(max=h)
    return b


@pytest.mark.parametrize(
    ("padded", "image", "output", "ratio"),
    [((480, 640), (480, 640), 7, 2), ((480, 640), (470, 601), 14, 2), ((224, 160), (200, 150), 7, 2),
     ((800, 1344), (800, 1333), 14, 2), ((96, 64), (96, 64), 7, 0)],
)  # fmt: skip
def test_packed_level_pooling_is_torchvisions_multiscale_roi_align(padded, image, output, ratio):
    """One RoiAlign over the packed levels = torchvision's MultiScaleRoIAlign (each box on its
    own level), also for boxes on the image's last pixel; only the offset's rounding differs.
    The all-levels form (detectors beyond the packed form's size) gives its numbers exactly."""
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.poolers import initLevelMapper

    from dmm_deploy.export.bundle_stages import _level_canvas, _pool_all_levels, _pool_own_level

    gen = torch.Generator().manual_seed(0)
    feats = _pyramid(*padded, 8, gen)
    boxes = _clipped_boxes(*image, 400, gen)
    mapper = initLevelMapper(2, 5)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output, ratio)
    want = pooler({str(k): f for k, f in enumerate(feats)}, [boxes], [padded])
    canvas, x, y = _level_canvas(feats)
    got = _pool_own_level(canvas, (x, y), boxes, (output, output), ratio, mapper)
    levels = mapper([boxes])
    if padded[0] >= 480:
        assert (torch.bincount(levels, minlength=4) > 0).all()  # every level is exercised
    # level 0 is pooled on its own tensor: torchvision's numbers to the bit; level 1 has no
    # offset (float rounding only); levels 2 and 3 carry the offset's rounding (~1e-5 px)
    torch.testing.assert_close(got[levels == 0], want[levels == 0], rtol=0, atol=0)
    torch.testing.assert_close(got[levels == 1], want[levels == 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # the form for larger detectors: every level, then each box's own (same arithmetic)
    every = _pool_all_levels(feats, boxes, (output, output), ratio, mapper)
    torch.testing.assert_close(every, want, rtol=0, atol=0)


def test_pooling_order_sorts_by_level_then_top_edge():
    """The heads pool boxes by RoI level, then top edge (cache locality); it is a permutation."""
    from torchvision.ops.poolers import initLevelMapper

    from dmm_deploy.export.bundle_stages import _pooling_order

    gen = torch.Generator().manual_seed(2)
    boxes = _clipped_boxes(800, 1333, 500, gen)
    mapper = initLevelMapper(2, 5)
    order = _pooling_order(boxes, mapper, len(boxes))
    assert sorted(order.tolist()) == list(range(len(boxes)))
    levels, top = mapper([boxes])[order], boxes[order, 1]
    assert (torch.bincount(levels, minlength=4) > 0).all()
    key = levels.double() * 1e4 + top.double()
    assert (key[1:] >= key[:-1]).all()


def test_packed_level_pooling_in_onnxruntime_follows_the_image_size(tmp_path):
    """The canvas's pads and offsets are traced from the feature shapes: one exported graph
    pools correctly at image sizes other than the one it was traced at."""
    import onnxruntime as ort
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.poolers import initLevelMapper

    from dmm_deploy.export.bundle import _trace
    from dmm_deploy.export.bundle_stages import _level_canvas, _pool_own_level

    mapper = initLevelMapper(2, 5)

    class Pool(torch.nn.Module):
        def forward(self, f0, f1, f2, f3, boxes):
            canvas, x, y = _level_canvas((f0, f1, f2, f3))
            return _pool_own_level(canvas, (x, y), boxes, (7, 7), 2, mapper)

    gen = torch.Generator().manual_seed(1)
    names = [f"feature{k}" for k in range(4)]
    axes = {n: {2: f"h{k}", 3: f"w{k}"} for k, n in enumerate(names)} | {"boxes": {0: "n"}}
    trace_args = (*_pyramid(320, 320, 4, gen), _clipped_boxes(320, 320, 20, gen))
    _trace(Pool(), trace_args, tmp_path / "pool.onnx", [*names, "boxes"], ["pooled"], axes)
    session = ort.InferenceSession(str(tmp_path / "pool.onnx"), providers=["CPUExecutionProvider"])
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    for padded, image in (((480, 640), (470, 640)), ((640, 416), (640, 400))):
        feats = _pyramid(*padded, 4, gen)
        boxes = _clipped_boxes(*image, 300, gen)
        feeds = {n: f.numpy() for n, f in zip(names, feats, strict=True)} | {"boxes": boxes.numpy()}
        got = torch.from_numpy(session.run(None, feeds)[0])
        want = pooler({str(k): f for k, f in enumerate(feats)}, [boxes], [padded])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_packed_pooling_holds_up_to_the_documented_image_side():
    """Canonical FPN mapping (224 at level 4): exact for sides <= 1567 px; beyond, the heads
    stage pools every level instead (torchvision's numbers for any box)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.ops.poolers import initLevelMapper

    from dmm_deploy.export.bundle_stages import DetectorHeadsStage, packed_pooling_is_exact

    mapper = initLevelMapper(2, 5)
    assert packed_pooling_is_exact(mapper, 1333) and packed_pooling_is_exact(mapper, 1567)
    assert not packed_pooling_is_exact(mapper, 1568)
    small = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=160, max_size=267)
    assert DetectorHeadsStage(small).packed
    large = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=1200, max_size=2000)
    assert not DetectorHeadsStage(large).packed
