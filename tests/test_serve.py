"""Serving many streams: the stream table on its own, and a real Triton Inference Server
(started and stopped here, loopback only) against the offline runtime.

The server tests need the ``serve`` extra (nvidia-pytriton's ``tritonserver``, tritonclient)
in an environment made from the system Python the backend stub links (see
:func:`dmm_deploy.serve.tritonserver.server_problem`); they skip with that reason elsewhere.
The bundle is ``$DMM_SERVE_BUNDLE`` when set (the torch-free CI environment), else a small
random-weight bundle exported here with torch.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from synthetic import blob_detections

from dmm_deploy.data import read_frame, read_mask
from dmm_deploy.runtime import PrecomputedDetections, Runtime, StreamingSegmenter
from dmm_deploy.serve.streams import FrameRequest, StreamError, StreamTable


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    env = os.environ.get("DMM_SERVE_BUNDLE")
    if env:
        return Path(env)
    pytest.importorskip("torch", reason="no $DMM_SERVE_BUNDLE and no torch to export one")
    import torch

    from dmm_deploy.export.bundle import export_bundle
    from dmm_deploy.model import DMMConfig, DMMNet

    torch.manual_seed(0)
    net = DMMNet(DMMConfig(backbone="resnet18", input_size=(96, 160))).eval()
    out = tmp_path_factory.mktemp("serve-bundle")
    export_bundle(net, out, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def runtime(bundle_dir) -> Runtime:
    return Runtime.open(bundle_dir, threads=1)


def _shrink(a: np.ndarray, scale: int, resample) -> np.ndarray:
    if scale == 1:
        return a
    h, w = a.shape[:2]
    return np.asarray(Image.fromarray(a).resize((w // scale, h // scale), resample))


class Video:
    """``n`` frames of a sample video from frame ``start`` on, played back and forth where
    the sample is shorter, with a detections file and annotations."""

    def __init__(
        self, root: Path, name: str, n: int, start: int, seed: int, tmp: Path, scale: int = 1
    ):
        every = sorted((root / "images" / name).glob("*.jpg"))
        period = max(1, 2 * (len(every) - 1))
        order = [(start + j) % period for j in range(n)]
        paths = [every[k if k < len(every) else period - k] for k in order]
        self.frames = [_shrink(read_frame(p), scale, Image.BILINEAR) for p in paths]
        self.size = self.frames[0].shape[:2]
        self.npz = blob_detections(tmp / f"{name}-{start}-{seed}.npz", n, self.size, seed)
        masks = root / "masks" / name
        # frame 0's annotation: the sample's first mask; judo adds an object later (its 00008)
        self.anns = {0: _shrink(read_mask(masks / "00000.png"), scale, Image.NEAREST)}
        if name == "judo" and n > 3:
            self.anns[3] = _shrink(read_mask(masks / "00008.png"), scale, Image.NEAREST)

    def offline(self, rt: Runtime) -> list[np.ndarray]:
        seg = StreamingSegmenter(rt, PrecomputedDetections(self.npz))
        return list(seg.segment(self.frames, self.anns[0], self.anns))


@pytest.fixture(scope="session")
def videos(shared_dir, tmp_path_factory) -> list[Video]:
    root = shared_dir / "data" / "vos_samples"
    tmp = tmp_path_factory.mktemp("serve-videos")
    specs = [("bike", 0, 1), ("judo", 0, 2), ("bike", 10, 3), ("judo", 20, 4)]
    return [Video(root, name, 6, start, seed, tmp) for name, start, seed in specs]


def assert_same_labels(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    """Label maps equal to the offline runtime's (>= 99.99 % of the pixels of every frame:
    batching changes the float summation order inside the graphs)."""
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape and g.dtype == np.uint8, (what, i)
        agree = float((g == w).mean())
        assert agree >= 0.9999, f"{what}: frame {i} agrees on {agree:.5f} of the pixels"


def test_serve_imports_no_torch_and_the_commands_are_light(repo_root):
    import subprocess
    import sys

    code = (
        "import sys, dmm_deploy.serve.commands\n"
        "heavy = [m for m in ('numpy', 'onnxruntime', 'tritonclient') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import dmm_deploy.serve.streams, dmm_deploy.serve.repository, dmm_deploy.serve.client\n"
        "import dmm_deploy.serve.tritonserver, dmm_deploy.serve.protocol\n"
        "bad = [m for m in ('torch', 'torchvision', 'dmm_deploy.model', 'dmm_deploy.matching',"
        " 'kernels') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)


# -- the stream table without a server -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _request(video: Video, sid: str, i: int, src: PrecomputedDetections, **kw) -> FrameRequest:
    return FrameRequest(
        sid,
        video.frames[i],
        video.anns.get(i),
        start=i == 0,
        detections=src.detect(i, video.frames[i]),
        **kw,
    )


@pytest.mark.slow  # exports a bundle first where $DMM_SERVE_BUNDLE is not set
def test_table_batches_streams_and_matches_offline(runtime, videos):
    table = StreamTable(runtime, max_streams=4, idle_timeout=60)
    srcs = [PrecomputedDetections(v.npz) for v in videos]
    got: list[list[np.ndarray]] = [[] for _ in videos]
    for i in range(4):
        reqs = [_request(v, f"s{k}", i, srcs[k]) for k, v in enumerate(videos)]
        for k, res in enumerate(table.process(reqs)):
            assert isinstance(res, np.ndarray), res
            got[k].append(res)
    for k, v in enumerate(videos):
        seg = StreamingSegmenter(runtime, PrecomputedDetections(v.npz))
        want = list(seg.segment(v.frames[:4], v.anns[0], v.anns))
        assert_same_labels(got[k], want, f"stream {k}")
    s = table.stats
    assert (s.frames, s.calls, s.batched_frames, s.batch_sizes) == (16, 4, 16, {4: 4})


@pytest.mark.slow
def test_table_refuses_bad_requests_alone(runtime, videos):
    """Each bad request gets its own error; the good request of the same call is served and
    the stream states are untouched."""
    clock = Clock()
    table = StreamTable(runtime, max_streams=2, idle_timeout=10, clock=clock)
    v = videos[0]
    src = PrecomputedDetections(v.npz)
    assert isinstance(table.process([_request(v, "a", 0, src)])[0], np.ndarray)
    f1 = v.frames[1]
    det1 = src.detect(1, f1)
    small = np.ascontiguousarray(f1[:100, :200])
    bad = [
        FrameRequest("b", f1, None, detections=det1),  # unknown stream, no start
        FrameRequest("c", f1, None, start=True, detections=det1),  # start without annotation
        FrameRequest("a", small, None, detections=det1),  # size change mid-stream
        FrameRequest("d", f1.astype(np.float32), v.anns[0], start=True, detections=det1),
        FrameRequest("e", f1[..., :2].copy(), v.anns[0], start=True, detections=det1),
        FrameRequest("f", f1, v.anns[0][:10], start=True, detections=det1),
        FrameRequest("g", f1, v.anns[0], start=True),  # no detections (bundle has no detector)
        FrameRequest(
            "h", f1, v.anns[0], start=True, detections=det1._replace(boxes=det1.boxes[:, :3])
        ),
    ]
    good = FrameRequest("a", f1, None, detections=det1)
    out = table.process([*bad, good])
    msgs = [str(e) for e in out[:-1]]
    assert all(isinstance(e, StreamError) for e in out[:-1]), msgs
    for m, pat in zip(
        msgs,
        [
            "unknown",
            "needs an annotation",
            "size changed",
            "uint8",
            r"\(H, W, 3\)",
            "annotation must be",
            "detections",
            "boxes \\(N, 4\\)",
        ],
        strict=True,
    ):
        assert re.search(pat, m), (pat, m)
    assert isinstance(out[-1], np.ndarray)
    assert table.live() == ["a"]
    # --max-streams: a second stream fits, a third is refused, the first ones keep working
    assert isinstance(table.process([_request(v, "b", 0, src)])[0], np.ndarray)
    err = table.process([_request(v, "c", 0, src)])[0]
    assert isinstance(err, StreamError) and "maximum of 2 streams" in str(err)
    # idle expiry: "b" is refreshed, "a" is not; after the timeout only "a" is gone
    clock.t = 6.0
    assert isinstance(table.process([FrameRequest("b", f1, None, detections=det1)])[0], np.ndarray)
    clock.t = 10.5
    assert table.expire() == ["a"]
    assert table.live() == ["b"] and table.stats.expired == 1
    err = table.process([FrameRequest("a", f1, None, detections=det1)])[0]
    assert isinstance(err, StreamError) and "expired" in str(err)


@pytest.mark.slow
def test_table_end_forgets_the_stream(runtime, videos):
    table = StreamTable(runtime, max_streams=1, idle_timeout=10)
    v = videos[1]
    src = PrecomputedDetections(v.npz)
    req = _request(v, "x", 0, src, end=True)
    assert isinstance(table.process([req])[0], np.ndarray)
    assert table.live() == [] and table.stats.ended == 1
    # the slot is free again
    assert isinstance(table.process([_request(v, "y", 0, src)])[0], np.ndarray)


# -- a real server -----------------------------------------------------------------------


def _server_or_skip():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] not installed")
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    from dmm_deploy.serve.tritonserver import server_problem

    why = server_problem()
    if why is not None:
        pytest.skip(f"Triton Inference Server cannot run here: {why}")


def _start(repo: Path):
    from dmm_deploy.serve.tritonserver import TritonServer, TritonServerError

    srv = TritonServer(repo, startup_timeout=180)
    try:
        return srv.start()
    except TritonServerError as e:
        pytest.fail(f"server did not start: {e}")


def metrics(srv) -> dict[str, float]:
    with urllib.request.urlopen(srv.metrics_url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(dmm_serve_\w+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
    _server_or_skip()
    from dmm_deploy.serve.repository import write_serve_repository

    repo = tmp_path_factory.mktemp("serve") / "repo"
    write_serve_repository(bundle_dir, repo, max_streams=16, idle_timeout=120, threads=1)
    srv = _start(repo)
    yield srv
    srv.stop()


def _run_stream(url, protocol, sid, video: Video, out: dict, errors: list) -> None:
    from dmm_deploy.serve.client import SegmentationClient

    try:
        with SegmentationClient(url, protocol) as c:
            src = PrecomputedDetections(video.npz)
            labels = c.segment(
                sid,
                video.frames,
                video.anns[0],
                video.anns,
                detections=src,
                num_frames=len(video.frames),
            )
            out[sid] = list(labels)
    except Exception as e:  # reported by the test
        errors.append(f"{sid}: {type(e).__name__}: {e}")


def _concurrently(jobs: list[tuple], timeout: float = 300) -> list[str]:
    out: dict = {}
    errors: list[str] = []
    threads = [threading.Thread(target=_run_stream, args=(*j, out, errors)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish in time"
    return out, errors


def test_four_concurrent_streams_equal_the_offline_runtime(server, runtime, videos):
    before = metrics(server)
    jobs = [
        (*((server.grpc_url, "grpc") if k % 2 == 0 else (server.http_url, "http")), f"cam-{k}", v)
        for k, v in enumerate(videos)
    ]
    got, errors = _concurrently(jobs)
    assert not errors, errors
    for k, v in enumerate(videos):
        assert_same_labels(got[f"cam-{k}"], v.offline(runtime), f"cam-{k}")
    after = metrics(server)
    frames = after["dmm_serve_frames"] - before["dmm_serve_frames"]
    batched = after["dmm_serve_batched_frames"] - before["dmm_serve_batched_frames"]
    assert frames == 4 * 6
    assert batched > 0, "no two streams ever shared a step"
    assert after["dmm_serve_streams"] == 0  # every stream ended with its last frame


def test_malformed_requests_get_errors_and_leave_others_alone(server, runtime, videos):
    from dmm_deploy.serve.client import SegmentationClient, ServerError

    v = videos[2]
    src = PrecomputedDetections(v.npz)
    f = v.frames[1]
    det = src.detect(1, f)
    bad = {
        "dtype": dict(frame=f.astype(np.float32), annotation=v.anns[0], start=True),
        "shape": dict(
            frame=np.zeros((*f.shape[:2], 4), np.uint8), annotation=v.anns[0], start=True
        ),
        "no start": dict(frame=f),
        "no annotation": dict(frame=f, start=True),
    }
    # a good stream runs in a thread while the bad requests arrive
    got, errors = {}, []
    t = threading.Thread(target=_run_stream, args=(server.grpc_url, "grpc", "good", v, got, errors))
    t.start()
    msgs = {}
    with SegmentationClient(server.grpc_url) as c:
        for name, kw in bad.items():
            with pytest.raises(ServerError) as e:
                c.infer(f"bad-{name}", detections=det, **kw)
            msgs[name] = str(e.value)
        # frame size change mid-stream: the stream keeps working with its own size after it
        c.infer("resize", v.frames[0], v.anns[0], start=True, detections=src.detect(0, v.frames[0]))
        with pytest.raises(ServerError) as e:
            c.infer("resize", np.ascontiguousarray(f[:240, :427]), detections=det)
        msgs["size change"] = str(e.value)
        assert c.infer("resize", f, detections=det, end=True).shape == f.shape[:2]
    t.join(300)
    assert not errors, errors
    assert "FP32" in msgs["dtype"] and "UINT8" in msgs["dtype"]
    assert "shape" in msgs["shape"] or "dims" in msgs["shape"], msgs["shape"]
    assert "START" in msgs["no start"] or "unknown" in msgs["no start"], msgs["no start"]
    assert "annotation" in msgs["no annotation"]
    assert "size changed" in msgs["size change"]
    assert_same_labels(got["good"], v.offline(runtime), "good stream")


@pytest.mark.slow
def test_load_eight_streams_twenty_frames(server, shared_dir, tmp_path):
    """8 streams x 20 frames at once: every frame answered, none lost; the figures printed."""
    root = shared_dir / "data" / "vos_samples"
    vids = [
        Video(root, "bike" if k % 2 else "judo", 20, k, 10 + k, tmp_path, scale=2) for k in range(8)
    ]
    before = metrics(server)
    t0 = time.perf_counter()
    got, errors = _concurrently(
        [(server.grpc_url, "grpc", f"load-{k}", v) for k, v in enumerate(vids)]
    )
    dt = time.perf_counter() - t0
    assert not errors, errors
    assert sorted(got) == sorted(f"load-{k}" for k in range(8))
    for k, v in enumerate(vids):
        labels = got[f"load-{k}"]
        assert len(labels) == 20 and all(lab.shape == v.size for lab in labels)
    after = metrics(server)
    frames = after["dmm_serve_frames"] - before["dmm_serve_frames"]
    batched = after["dmm_serve_batched_frames"] - before["dmm_serve_batched_frames"]
    calls = after["dmm_serve_calls"] - before["dmm_serve_calls"]
    assert frames == 160
    print(
        f"\nload: 8 streams x 20 frames in {dt:.1f} s: {frames / dt:.1f} frames/s, "
        f"{calls:.0f} batched steps (mean {frames / calls:.2f} frames/step), "
        f"{batched / frames:.0%} of frames ran batched with another stream"
    )


def test_idle_stream_expires_and_max_streams_holds(bundle_dir, videos, tmp_path):
    """A client that disappears mid-stream: its state is dropped after the idle timeout (the
    server's gauge falls to 0), its next frame is refused; --max-streams refuses a third
    stream while two live, and admits it once they expired."""
    _server_or_skip()
    from dmm_deploy.serve.client import SegmentationClient, ServerError
    from dmm_deploy.serve.repository import write_serve_repository

    repo = write_serve_repository(
        bundle_dir, tmp_path / "repo", max_streams=2, idle_timeout=1.5, threads=1
    )
    srv = _start(repo)
    try:
        v = videos[0]
        src = PrecomputedDetections(v.npz)
        with SegmentationClient(srv.grpc_url) as c:
            for sid in ("a", "b"):
                c.infer(
                    sid, v.frames[0], v.anns[0], start=True, detections=src.detect(0, v.frames[0])
                )
            with pytest.raises(ServerError, match="maximum of 2 streams"):
                c.infer(
                    "c", v.frames[0], v.anns[0], start=True, detections=src.detect(0, v.frames[0])
                )
            c.infer("a", v.frames[1], detections=src.detect(1, v.frames[1]))
            assert metrics(srv)["dmm_serve_streams"] == 2
            # both clients go away without ending their streams
            deadline = time.monotonic() + 15
            while metrics(srv)["dmm_serve_streams"] > 0 and time.monotonic() < deadline:
                time.sleep(0.25)
            m = metrics(srv)
            assert m["dmm_serve_streams"] == 0 and m["dmm_serve_expired"] == 2
            with pytest.raises(ServerError):
                c.infer("a", v.frames[2], detections=src.detect(2, v.frames[2]))
            lab = c.infer(
                "c", v.frames[0], v.anns[0], start=True, detections=src.detect(0, v.frames[0])
            )
            assert lab.shape == v.size
    finally:
        srv.stop()


def test_client_command_writes_the_offline_label_maps(server, runtime, shared_dir, tmp_path):
    import argparse

    from dmm_deploy.serve.commands import add_client_args, run_client

    root = shared_dir / "data" / "vos_samples"
    frames = sorted((root / "images" / "bike").glob("*.jpg"))
    size = read_frame(frames[0]).shape[:2]
    npz = blob_detections(tmp_path / "bike.npz", len(frames), size, seed=7)
    p = argparse.ArgumentParser()
    add_client_args(p)
    args = p.parse_args(
        [
            "--url",
            server.grpc_url,
            "--frames",
            str(root / "images" / "bike"),
            "--mask",
            str(root / "masks" / "bike" / "00000.png"),
            "--precomputed",
            str(npz),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert run_client(args) == 0
    got = [read_mask(tmp_path / "out" / f"{f.stem}.png") for f in frames]
    seg = StreamingSegmenter(runtime, PrecomputedDetections(npz))
    want = list(seg.segment(frames, read_mask(root / "masks" / "bike" / "00000.png")))
    assert_same_labels(got, want, "client command")


# -- the repository for a GPU server ---------------------------------------------------------


@pytest.fixture
def model_config_protobufs():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="no tritonclient[grpc]")


def test_triton_repo_configs_parse_and_batch(model_config_protobufs, bundle_dir, tmp_path):
    from dmm_deploy.serve.repository import check_config, write_triton_repo

    models = write_triton_repo(bundle_dir, tmp_path / "ort", platform="onnxruntime")
    cfg = {n: check_config((d / "config.pbtxt").read_text()) for n, d in models.items()}
    seg = cfg["dmm_segment"]
    assert seg.backend == "python" and seg.sequence_batching.HasField("oldest")
    assert seg.sequence_batching.max_sequence_idle_microseconds == 30_000_000
    assert {c.name for c in seg.sequence_batching.control_input} == {"START", "END"}
    assert cfg["dmm_encoder"].platform == "onnxruntime_onnx"
    for stage in ("encoder", "match", "decoder"):
        c = cfg[f"dmm_{stage}"]
        assert c.max_batch_size == 16 and c.HasField("dynamic_batching"), stage
        assert (models[f"dmm_{stage}"] / "1" / "model.onnx").is_file()
    assert cfg["dmm_embed"].max_batch_size == 0  # boxes with a batch index: no batch axis
    # the encoder's tensors without the batch axis, as the bundle declares them
    enc = {t.name: list(t.dims) for t in cfg["dmm_encoder"].input}
    assert enc["image"][0] == 3
    trt = write_triton_repo(bundle_dir, tmp_path / "trt", platform="tensorrt_plan")
    assert check_config((trt["dmm_encoder"] / "config.pbtxt").read_text()).platform == (
        "tensorrt_plan"
    )
    with pytest.raises(ValueError, match="not empty"):
        write_triton_repo(bundle_dir, tmp_path / "trt")
    with pytest.raises(ValueError, match="not a valid Triton model configuration"):
        check_config('name: "x" max_batch_size: "eight"')


@pytest.mark.slow
def test_triton_repo_runs_over_bls_on_the_local_server(bundle_dir, runtime, videos, tmp_path):
    """The GPU repository's stream model, with its stages as Python-backend models on the
    CPU, served here: two concurrent streams through BLS equal the offline runtime."""
    _server_or_skip()
    from dmm_deploy.serve.repository import write_triton_repo

    write_triton_repo(bundle_dir, tmp_path / "repo", platform="python", max_streams=4)
    srv = _start(tmp_path / "repo")
    try:
        got, errors = _concurrently([(srv.grpc_url, "grpc", f"bls-{k}", videos[k]) for k in (0, 1)])
        assert not errors, errors
        for k in (0, 1):
            assert_same_labels(got[f"bls-{k}"], videos[k].offline(runtime), f"bls-{k}")
        assert metrics(srv)["dmm_serve_frames"] == 12
    finally:
        srv.stop()


# -- the commands ------------------------------------------------------------------------------

SERVE_MAIN = (
    "import argparse, sys\n"
    "from dmm_deploy.serve.commands import add_serve_args, run_serve\n"
    "p = argparse.ArgumentParser()\n"
    "add_serve_args(p)\n"
    "sys.exit(run_serve(p.parse_args(sys.argv[1:])))\n"
)


def _parse(add, argv: list[str]):
    import argparse

    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


def test_commands_refuse_bad_arguments_in_one_line(bundle_dir, tmp_path):
    from dmm_deploy.serve.commands import (
        add_client_args,
        add_serve_args,
        add_triton_repo_args,
        run_client,
        run_serve,
        run_triton_repo,
    )

    b = str(bundle_dir)
    cases = [
        (add_serve_args, run_serve, [str(tmp_path / "nope")], FileNotFoundError, "BUNDLE"),
        (add_serve_args, run_serve, [b, "--http-port", "0"], ValueError, "--http-port"),
        (add_serve_args, run_serve, [b, "--grpc-port", "8000"], ValueError, "must differ"),
        (add_serve_args, run_serve, [b, "--device", "tpu"], ValueError, "--device"),
        (add_serve_args, run_serve, [b, "--max-streams", "0"], ValueError, "--max-streams"),
        (add_serve_args, run_serve, [b, "--idle-timeout", "-1"], ValueError, "--idle-timeout"),
        (add_triton_repo_args, run_triton_repo, [b, str(tmp_path / "r"), "--max-batch", "0"],
         ValueError, "--max-batch"),
        (add_client_args, run_client,
         ["--url", "localhost:1", "--frames", str(tmp_path), "--mask", str(tmp_path / "m.png"),
          "--out", str(tmp_path / "o")], FileNotFoundError, "--mask"),
    ]  # fmt: skip
    for add, run, argv, exc, word in cases:
        with pytest.raises(exc) as e:
            run(_parse(add, argv))
        msg = str(e.value)
        assert word in msg and "\n" not in msg, (argv, msg)
    (tmp_path / "r" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"OUT: .* is not empty"):
        run_triton_repo(_parse(add_triton_repo_args, [b, str(tmp_path / "r")]))


def _snapshot(folder: Path) -> dict[str, tuple[int, str] | None]:
    """Every entry under ``folder``: a file's size and SHA-256, None for a folder."""
    import hashlib

    return {
        str(p.relative_to(folder)): (
            (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else None
        )
        for p in sorted(folder.rglob("*"))
    }


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """``dmm-deploy ARGV`` in this process: its exit code and its stderr."""
    from dmm_deploy.cli import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _fake_repository(folder: Path) -> Path:
    """A model repository as this package writes it (what ``--overwrite`` may replace)."""
    from dmm_deploy.serve.repository import MODEL_NAME, SHIM

    (folder / MODEL_NAME / "1").mkdir(parents=True)
    (folder / MODEL_NAME / "1" / "model.py").write_text(SHIM.format(module="triton_model"))
    (folder / MODEL_NAME / "config.pbtxt").write_text('name: "dmm_segment"\n')
    _relist(folder)
    return folder


def _relist(folder: Path) -> None:
    """Record every file of ``folder`` as written by this package (its repository listing)."""
    from dmm_deploy.serve.repository import _list_files

    _list_files(folder)


def test_an_out_in_or_around_the_bundle_is_refused_before_anything_is_deleted(
    bundle_dir, tmp_path, capsys
):
    """``triton-repo --overwrite`` and ``serve --repository`` refuse an output folder that is
    the bundle, holds it (the bundle was deleted with it) or lies in it: one line, exit 2,
    the bundle and the folder around it untouched (no tritonclient needed)."""
    import shutil

    outer = tmp_path / "outer"
    bundle = outer / "bundle"
    shutil.copytree(bundle_dir, bundle)
    (tmp_path / "link").symlink_to(bundle, target_is_directory=True)
    before = _snapshot(tmp_path)
    b = str(bundle)
    cases = [
        (["triton-repo", b, str(outer), "--overwrite"], "OUT", "holds the bundle"),
        (["triton-repo", b, b, "--overwrite"], "OUT", "is the bundle's folder"),
        (["triton-repo", b, str(tmp_path / "link"), "--overwrite"], "OUT", "bundle's folder"),
        (["triton-repo", b, str(bundle / "repo")], "OUT", "lies in the bundle"),
        (["serve", b, "--repository", b], "--repository", "is the bundle's folder"),
        (["serve", b, "--repository", str(outer)], "--repository", "holds the bundle"),
        (["serve", b, "--repository", str(bundle / "repo")], "--repository", "lies in the bundle"),
    ]
    for argv, arg, what in cases:
        rc, err = _cli(argv, capsys)
        assert rc == 2, (argv, err)
        assert err.startswith(f"dmm-deploy {argv[0]}: error: {arg} "), (argv, err)
        assert what in err and err.count("\n") == 1, (argv, err)
        assert _snapshot(tmp_path) == before, argv


def test_triton_repo_overwrite_replaces_only_a_repository_it_wrote(bundle_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, err = _cli(["triton-repo", str(bundle_dir), str(out), "--overwrite"], capsys)
    assert rc == 2 and "OUT" in err and "holds no model repository" in err, err
    assert err.count("\n") == 1 and (out / "notes.txt").read_text() == "keep me"
    # a repository written here, plus an engine built on the server (as the tensorrt_plan
    # platform asks) and a model added by hand: neither is deleted
    repo = _fake_repository(tmp_path / "repo")
    (repo / "dmm_encoder" / "1").mkdir(parents=True)
    (repo / "dmm_encoder" / "1" / "model.plan").write_bytes(b"engine")
    (repo / "my_model" / "1").mkdir(parents=True)
    (repo / "my_model" / "config.pbtxt").write_text('name: "my_model"\n')
    before = _snapshot(repo)
    rc, err = _cli(["triton-repo", str(bundle_dir), str(repo), "--overwrite"], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "holds files dmm-deploy did not write (dmm_encoder/1/model.plan, " in err, err
    assert "my_model/config.pbtxt" in err and _snapshot(repo) == before


def test_a_missing_serve_extra_is_one_line_after_the_arguments_and_touches_nothing(
    bundle_dir, tmp_path, monkeypatch, capsys
):
    """Without tritonclient or tritonserver (the serve extra), ``triton-repo --overwrite`` and
    ``serve`` stop in one line naming what to install, before any folder is written or
    deleted; the arguments are checked before and keep their own errors."""
    import sys

    import onnxruntime

    from dmm_deploy.serve import repository

    for name in ("tritonclient", "tritonclient.grpc", "pytriton"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, find_spec says missing
    old = _fake_repository(tmp_path / "old")
    before = _snapshot(tmp_path)
    b = str(bundle_dir)
    new = str(tmp_path / "new")
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    cases = [
        (["triton-repo", b, str(old), "--overwrite"], "tritonclient[grpc]"),
        (["triton-repo", b, new, "--platform", "python"], "tritonclient[grpc]"),
        (["serve", b, "--repository", new], "tritonclient[grpc]"),
        (["serve", b], "tritonclient[grpc]"),
        (["serve", b, "--threads", "0"], "--threads"),
        (["serve", b, "--backend", "tensorrt"], "--backend tensorrt runs on --device cuda"),
        (["serve", b, "--device", "cuda"], "dmm-deploy[serve]" if cuda else "--device cuda"),
        (["serve", b, "--max-batch", "0", "--repository", new], "--max-batch"),
        (["triton-repo", b, str(old)], "not empty"),
    ]
    for argv, what in cases:
        rc, err = _cli(argv, capsys)
        assert rc == 2, (argv, err)
        assert what in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        if "tritonclient" in what:
            assert "pip install 'dmm-deploy[serve]'" in err, err
        assert _snapshot(tmp_path) == before, argv
    # with tritonclient, the server (nvidia-pytriton) is the missing part of the extra
    monkeypatch.setattr(repository, "_require_config_protobufs", lambda: None)
    rc, err = _cli(["serve", b, "--repository", new], capsys)
    assert rc == 2 and "tritonserver not found" in err and "dmm-deploy[serve]" in err, err
    assert _snapshot(tmp_path) == before


def test_triton_repo_overwrite_swaps_in_a_complete_repository(bundle_dir, tmp_path, monkeypatch):
    """The new repository is written beside OUT and moved in place only when complete: a
    failure part-way leaves the earlier repository as it was, and no temporary folder."""
    from dmm_deploy.serve import repository

    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except (ImportError, RuntimeError):  # the configs are then written without the parse check
        monkeypatch.setattr(repository, "_require_config_protobufs", lambda: None)
        monkeypatch.setattr(repository, "check_config", lambda text, where="": None)
    out = tmp_path / "repo"
    models = repository.write_triton_repo(bundle_dir, out, platform="python")
    assert all(d.parent == out and (d / "config.pbtxt").is_file() for d in models.values())
    (tmp_path / "probe").mkdir()  # a new folder's permissions (the umask's)
    assert out.stat().st_mode & 0o777 == (tmp_path / "probe").stat().st_mode & 0o777
    (tmp_path / "probe").rmdir()
    (out / "dmm_encoder" / "stale.txt").write_text("from the earlier repository")
    _relist(out)  # a file an earlier repository had (the new one has not)
    before = _snapshot(tmp_path)

    write_model = repository._write_model

    def failing(root, name, config, shim=None):  # the disk fills up at the last model
        if name == repository.MODEL_NAME:
            raise OSError(28, "No space left on device", str(root / name))
        return write_model(root, name, config, shim)

    monkeypatch.setattr(repository, "_write_model", failing)
    with pytest.raises(OSError, match="No space left"):
        repository.write_triton_repo(bundle_dir, out, overwrite=True)
    assert _snapshot(tmp_path) == before  # the earlier repository, nothing beside it
    # an empty OUT (a mount point, say) is filled in place, and emptied again on failure
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="No space left"):
        repository.write_triton_repo(bundle_dir, tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
    (tmp_path / "empty").rmdir()
    monkeypatch.setattr(repository, "_write_model", write_model)
    models = repository.write_triton_repo(bundle_dir, out, overwrite=True)
    assert sorted(e.name for e in tmp_path.iterdir()) == ["repo"]
    assert not (out / "dmm_encoder" / "stale.txt").exists()
    assert (models["dmm_encoder"] / "1" / "model.onnx").is_file()
    assert (out / "dmm_segment" / "bundle" / "manifest.json").is_file()


def test_serve_command_serves_until_sigterm(bundle_dir, tmp_path):
    """``serve`` starts the server on the given ports, answers, and on SIGTERM stops it and
    exits 0 (no server process left behind)."""
    _server_or_skip()
    import signal
    import subprocess
    import sys

    from dmm_deploy.serve.client import SegmentationClient
    from dmm_deploy.serve.tritonserver import free_port

    ports = [free_port() for _ in range(3)]
    argv = [str(bundle_dir), "--threads", "1", "--repository", str(tmp_path / "repo")]
    for name, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports, strict=True):
        argv += [name, str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_MAIN, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the server is ready
        assert line.startswith("serving"), line + proc.stdout.read()
        with SegmentationClient(f"127.0.0.1:{ports[0]}", "http") as c:
            assert c.ready()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # the server's ports are free again: its process is gone. SO_REUSEADDR lets the bind
    # through connections left in TIME_WAIT by the client, not a socket still listening;
    # the server's own shutdown may take a moment after the command returned
    import socket

    for port in ports:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.5)


def test_serve_on_a_port_in_use_is_one_line(bundle_dir, tmp_path):
    """A server that cannot start (here: its HTTP port is taken) ends ``serve`` with one line
    naming the server's own error, exit 2, and no server left running."""
    _server_or_skip()
    import socket
    import subprocess
    import sys

    from dmm_deploy.serve.tritonserver import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        argv = [str(bundle_dir), "--threads", "1", "--http-port", str(busy)]
        argv += ["--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
        done = subprocess.run(
            [sys.executable, "-m", "dmm_deploy", "serve", *argv],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dmm-deploy serve: error: tritonserver"), lines


# -- the client command's checks, without a server ---------------------------------------------


def _client_inputs(root: Path, n: int = 3) -> tuple[Path, Path]:
    """A folder of ``n`` small frames and a first mask (written as dmm-deploy writes masks)."""
    from dmm_deploy.data import write_mask

    frames = root / "frames"
    frames.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((16, 24, 3), 40 * i, np.uint8)).save(frames / f"{i:05d}.jpg")
    mask = np.zeros((16, 24), np.uint8)
    mask[4:10, 5:12] = 1
    (root / "prev").mkdir()
    write_mask(root / "prev" / "00000.png", mask)
    return frames, root / "prev" / "00000.png"


class _FakeClient:
    """Stands in for :class:`~dmm_deploy.serve.client.SegmentationClient` (no tritonclient):
    ``why`` is its readiness, ``fail_at`` the frame the server refuses (None: none)."""

    why: str | None = None
    fail_at: int | None = None

    def __init__(self, url, protocol="grpc", model="dmm_segment", timeout=120.0):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def readiness(self):
        return self.why

    def segment(self, stream_id, frames, first_mask, detections=None, num_frames=None):
        from dmm_deploy.serve.client import ServerError

        for i, _ in enumerate(frames):
            if i == self.fail_at:
                raise ServerError("frame size changed mid-stream")
            yield first_mask


def test_client_refuses_a_bad_url_or_out_in_one_line_and_writes_nothing(tmp_path, capsys):
    """``client`` applies ``segment``'s rules to ``--out`` (not an input, new or empty unless
    ``--overwrite``, which replaces only masks dmm-deploy wrote) and refuses a ``--url`` with
    a scheme, all before any connection: one line, exit 2, nothing written."""
    from dmm_deploy.data import write_mask

    frames, mask = _client_inputs(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep me")
    mine = tmp_path / "mine"
    mine.mkdir()
    write_mask(mine / "00000.png", np.zeros((16, 24), np.uint8))
    Image.new("RGB", (4, 4)).save(mine / "photo.png")
    (tmp_path / "blank").mkdir()
    blank = tmp_path / "blank" / "00000.png"
    write_mask(blank, np.zeros((16, 24), np.uint8))  # the first frame's size, no object
    before = _snapshot(tmp_path)
    base = ["client", "--url", "localhost:1", "--frames", str(frames), "--mask", str(mask)]
    cases = [
        (["--out", str(frames)], "--out", "is the --frames folder"),
        (["--out", str(mask.parent)], "--out", "holds the --mask file"),
        (["--out", str(mask.parent), "--overwrite"], "--out", "holds the --mask file"),
        (["--out", str(tmp_path)], "--out", "holds the --frames folder"),
        (["--out", str(mask)], "--out", "is a file"),
        (["--out", str(full)], "--out", "is not empty"),
        (["--out", str(full), "--overwrite"], "--overwrite", "notes.txt"),
        (["--out", str(mine), "--overwrite"], "--overwrite", "photo.png"),
        (["--out", str(tmp_path / "o"), "--url", "http://localhost:1"], "--url", "scheme"),
        (["--out", str(tmp_path / "o"), "--url", "localhost"], "--url", "HOST:PORT"),
        (["--out", str(tmp_path / "o"), "--max-frames", "0"], "--max-frames", ">= 1"),
        (["--out", str(tmp_path / "o"), "--mask", str(blank)], "--mask", "holds no object"),
    ]
    for argv, arg, what in cases:
        rc, err = _cli(base + argv, capsys)
        assert rc == 2, (argv, err)
        assert err.startswith(f"dmm-deploy client: error: {arg}"), (argv, err)
        assert what in err and err.count("\n") == 1, (argv, err)
        assert "--resume" not in err, err  # the client has no --resume
        assert _snapshot(tmp_path) == before, argv


def test_client_without_tritonclient_is_one_line_naming_the_serve_extra(
    tmp_path, monkeypatch, capsys
):
    import sys

    frames, mask = _client_inputs(tmp_path)
    for name in ("tritonclient", "tritonclient.grpc", "tritonclient.http"):
        monkeypatch.setitem(sys.modules, name, None)
    before = _snapshot(tmp_path)
    for protocol in ("grpc", "http"):
        argv = ["client", "--url", "localhost:1", "--protocol", protocol, "--frames"]
        argv += [str(frames), "--mask", str(mask), "--out", str(tmp_path / "co")]
        rc, err = _cli(argv, capsys)
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"tritonclient[{protocol}]" in err and "pip install 'dmm-deploy[serve]'" in err
        assert _snapshot(tmp_path) == before


def test_client_creates_out_only_for_a_ready_server_and_marks_a_refused_run(
    tmp_path, monkeypatch, capsys
):
    """``--out`` is created only once the server's model is ready (no server: one line, exit
    2, no folder); a frame the server refuses ends the run in one line and leaves the folder
    marked partial, which ``--overwrite`` then replaces."""
    from dmm_deploy.data.output import PARTIAL_MARKER
    from dmm_deploy.serve import client

    frames, mask = _client_inputs(tmp_path)
    monkeypatch.setattr(client, "SegmentationClient", _FakeClient)
    out = tmp_path / "co"
    argv = ["client", "--url", "localhost:1", "--frames", str(frames), "--mask", str(mask)]
    argv += ["--out", str(out)]
    monkeypatch.setattr(_FakeClient, "why", "no server answered at localhost:1 (grpc): refused")
    rc, err = _cli(argv, capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("dmm-deploy client: error: --url: no server answered"), err
    assert not out.exists()
    monkeypatch.setattr(_FakeClient, "why", None)
    monkeypatch.setattr(_FakeClient, "fail_at", 2)
    rc, err = _cli(argv, capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "the server refused frame 00002.jpg (3 of 3): frame size changed" in err, err
    assert (out / PARTIAL_MARKER).is_file() and len(list(out.glob("*.png"))) == 2
    rc, err = _cli(argv, capsys)
    assert rc == 2 and "is not empty (unfinished run" in err and "--resume" not in err, err
    monkeypatch.setattr(_FakeClient, "fail_at", None)
    rc, err = _cli([*argv, "--overwrite"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert (read_mask(out / "00002.png") == read_mask(mask)).all()


def test_client_readiness_tells_no_server_from_a_model_not_ready():
    """:meth:`SegmentationClient.readiness` (no tritonclient: a stand-in connection)."""
    from types import SimpleNamespace

    from dmm_deploy.serve.client import SegmentationClient

    class ISE(Exception):
        def message(self):
            return "failed to connect to all addresses; last error: x: Connection refused"

    class Conn:
        live, ready, model = ISE(), True, False

        def _answer(self, v):
            if isinstance(v, Exception):
                raise v
            return v

        def is_server_live(self, **kw):
            return self._answer(self.live)

        def is_server_ready(self, **kw):
            return self._answer(self.ready)

        def is_model_ready(self, name, **kw):
            return self._answer(self.model)

    c = object.__new__(SegmentationClient)
    c.url, c.protocol, c.model, c.timeout = "localhost:1", "grpc", "dmm_segment", 1.0
    c._exc = SimpleNamespace(InferenceServerException=ISE)
    c._c = conn = Conn()
    assert c.readiness() == (
        "no server answered at localhost:1 (grpc): Connection refused (is the server running, "
        "and is this its grpc port? the other one needs --protocol http)"
    )
    conn.live = ConnectionRefusedError(111, "Connection refused")
    assert "no server answered at localhost:1 (grpc): Connection refused (" in c.readiness()
    conn.live = True
    assert "a server answers at localhost:1 (grpc), but its model 'dmm_segment' is not " in (
        c.readiness()
    )
    conn.ready = False
    assert "is not ready (still loading its models?)" in c.readiness() and not c.ready()
    conn.ready = conn.model = True
    assert c.readiness() is None and c.ready()


def test_client_with_no_server_is_one_line(tmp_path, capsys):
    """With tritonclient and nothing listening: one line, exit 2, ``--out`` not created."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] not installed")
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    import socket

    frames, mask = _client_inputs(tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for protocol in ("grpc", "http"):
        argv = ["client", "--url", f"127.0.0.1:{port}", "--protocol", protocol, "--frames"]
        argv += [str(frames), "--mask", str(mask), "--out", str(tmp_path / "co")]
        rc, err = _cli(argv, capsys)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"--url: no server answered at 127.0.0.1:{port} ({protocol})" in err, err
        assert not (tmp_path / "co").exists()
