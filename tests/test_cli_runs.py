"""``dmm-deploy segment`` runs that get past the checks: the output guarantees on both paths.

- ``--bundle``: the runtime's ``build_segmenter`` is replaced by a small recurrent numpy
  segmenter (each label map is the previous one shifted by a pixel, so a wrong replay on
  ``--resume`` shows), which also proves the bundle path needs no torch.
- PyTorch: a tiny DMM-Net (ResNet-18, 64 x 112 input, random weights) on oracle proposals.

Covered: lock, Ctrl-C (exit 130, partial marker, no overlay), a bad frame mid-video, --resume
equal to an uninterrupted run, --overwrite removing stale masks (and only the masks it wrote),
``export-model --overwrite`` checking --out again before replacing it, progress lines off a
terminal, -q, singular words, void ids, AppleDouble files, live sources, unusable weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from dmm_deploy.cli import main
from dmm_deploy.data import make_synthetic_video, read_label_dir, read_mask, write_mask
from dmm_deploy.data.frames import Frame, FrameSource
from dmm_deploy.data.output import (
    LOCK_FILE,
    PARTIAL_MARKER,
    ResultFolder,
    is_written_mask,
    read_partial,
)

T = 6


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    v = make_synthetic_video(T, 48, 64, num_objects=3, late_objects=1, seed=1)
    root = v.write(base / "video")
    bundle = base / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    return types.SimpleNamespace(v=v, root=root, bundle=bundle, base=base)


class ShiftSegmenter:
    """Recurrent stand-in for the runtime's segmenter: labels(t) = labels(t-1) shifted one
    pixel right, new annotations pasted over; ``fail_at`` raises KeyboardInterrupt there."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.prev = None
        self.calls = 0
        self.fail_at = fail_at
        self.masks = []

    @property
    def object_ids(self) -> list[int]:
        return sorted(int(i) for i in np.unique(self.prev) if i)

    def start(self, frame, mask):
        self.masks.append(np.asarray(mask).copy())
        self.prev = np.asarray(mask, np.uint8).copy()
        self.calls = 1
        return self.prev.copy()

    def step(self, frame, new_masks=None):
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        self.calls += 1
        labels = np.roll(self.prev, 1, axis=1)
        if new_masks is not None:
            self.masks.append(np.asarray(new_masks).copy())
            labels = np.where(new_masks > 0, new_masks, labels).astype(np.uint8)
        self.prev = labels
        return labels.copy()


@pytest.fixture
def runtime(monkeypatch):
    """Replace ``dmm_deploy.runtime.jobs`` by a module building :class:`ShiftSegmenter`."""
    state = types.SimpleNamespace(opts=[], fail_at=None, made=[])

    def build_segmenter(opts):
        state.opts.append(opts)
        seg = ShiftSegmenter(state.fail_at)
        state.made.append(seg)
        return seg

    module = types.ModuleType("dmm_deploy.runtime.jobs")
    module.build_segmenter = build_segmenter
    monkeypatch.setitem(sys.modules, "dmm_deploy.runtime.jobs", module)
    return state


def bundle_args(video, out: Path, *extra) -> list[str]:
    return [
        "segment", "--bundle", str(video.bundle), "--frames", str(video.root / "frames"),
        "--annotations", str(video.root / "annotations"), "--out", str(out), "--no-progress",
        *map(str, extra),
    ]  # fmt: skip


def run(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return code, cap.out, cap.err


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_bundle_run_writes_masks_and_passes_the_options(video, runtime, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, bundle_args(video, out, "--backend", "tensorrt", "--device", "cuda",
                            "--threads", "2", "--overlay", tmp_path / "o.png")
    )  # fmt: skip
    assert code == 0, err
    opts = runtime.opts[0]
    assert (opts.bundle, opts.backend, opts.device, opts.threads) == (
        video.bundle,
        "tensorrt",
        "cuda",
        2,
    )
    assert pngs(out) == [f"{t:05d}.png" for t in range(T)]
    assert hidden(out) == [] and not (out / PARTIAL_MARKER).exists()
    assert f"segmented {T} frames (64x48)" in stdout and "frames/s; setup" in stdout
    assert "3 objects [1, 2, 3]" in stdout  # object 3 enters through --annotations
    assert "warning" not in err  # a bundle holds its weights
    assert (tmp_path / "o.png").is_file()


def test_bundle_path_imports_no_torch(video, tmp_path):
    script = f"""
import sys, types
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_cli_runs import ShiftSegmenter
m = types.ModuleType("dmm_deploy.runtime.jobs")
m.build_segmenter = lambda opts: ShiftSegmenter()
sys.modules["dmm_deploy.runtime.jobs"] = m
from dmm_deploy.cli import main
code = main({bundle_args(video, tmp_path / "out")!r})
print(code, "torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "0 False", r.stdout + r.stderr


def test_ctrl_c_marks_partial_and_resume_equals_an_uninterrupted_run(
    video, runtime, tmp_path, capsys
):
    full = tmp_path / "full"
    assert run(capsys, bundle_args(video, full, "--overlay", tmp_path / "full.mp4"))[0] == 0
    out = tmp_path / "out"
    strip = tmp_path / "part.png"
    runtime.fail_at = 3
    code, stdout, err = run(capsys, bundle_args(video, out, "--overlay", strip))
    assert code == 130
    assert err.strip().splitlines() == [
        f"dmm-deploy segment: interrupted after 3 of {T} frames ({out} is marked partial; "
        "continue with --resume)"
    ]
    assert pngs(out) == ["00000.png", "00001.png", "00002.png"]
    assert hidden(out) == []  # no lock, no temporary file
    marker = read_partial(out)
    assert marker["status"] == "partial" and marker["frames_written"] == 3
    assert marker["reason"] == f"interrupted after 3 of {T} frames"
    assert not strip.exists() and list(tmp_path.glob(".part*")) == []  # no partial overlay
    # a plain rerun is refused, naming the unfinished run
    code, _, err = run(capsys, bundle_args(video, out))
    assert code == 2 and "--resume to continue it" in err
    runtime.fail_at = None
    code, stdout, err = run(capsys, bundle_args(video, out, "--overlay", strip, "--resume"))
    assert code == 0, err
    assert "resumed: 3 frames replayed (masks kept), 3 written" in stdout
    assert not (out / PARTIAL_MARKER).exists() and hidden(out) == []
    _, got = read_label_dir(out)
    _, want = read_label_dir(full)
    np.testing.assert_array_equal(got, want)
    assert strip.is_file()  # the replayed frames feed the overlay too
    assert runtime.made[-1].calls == T  # every frame went through the segmenter
    code, _, err = run(capsys, bundle_args(video, out, "--resume"))
    assert code == 2 and "holds no unfinished run" in err  # finished: nothing to resume


def test_resume_rewrites_a_mask_that_differs_and_says_so(video, runtime, tmp_path, capsys):
    out = tmp_path / "out"
    runtime.fail_at = 4
    assert run(capsys, bundle_args(video, out))[0] == 130
    write_mask(out / "00001.png", np.zeros((48, 64), np.uint8))  # tampered with
    runtime.fail_at = None
    code, _, err = run(capsys, bundle_args(video, out, "--resume"))
    assert code == 0 and "1 resumed mask differed from the replay and were rewritten" in err
    full = tmp_path / "full"
    run(capsys, bundle_args(video, full))
    np.testing.assert_array_equal(read_label_dir(out)[1], read_label_dir(full)[1])


def test_resume_refuses_pngs_it_did_not_write(video, runtime, tmp_path, capsys):
    """A foreign PNG named like a frame would pass for that frame's mask and be rewritten by
    the replay: --resume refuses it, naming it, and changes nothing."""
    out = tmp_path / "out"
    runtime.fail_at = 4
    assert run(capsys, bundle_args(video, out))[0] == 130
    photo = out / "00001.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(photo)  # an RGB picture
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    runtime.fail_at = None
    code, _, err = run(capsys, bundle_args(video, out, "--resume"))
    assert code == 2 and err.count("\n") == 1, err
    assert "--resume: --out" in err and "holds other things than masks written by" in err
    assert "(00001.png)" in err and {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bad_frame_mid_video_stops_with_one_line_and_marks_partial(
    video, runtime, tmp_path, capsys
):
    frames = tmp_path / "frames"
    shutil.copytree(video.root / "frames", frames)
    (frames / "00004.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    argv = bundle_args(video, out, "--overlay", tmp_path / "o.mp4")
    argv[argv.index("--frames") + 1] = str(frames)
    code, _, err = run(capsys, argv)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("dmm-deploy segment: error: cannot read frame") and "00004.png" in line
    assert pngs(out) == [f"{t:05d}.png" for t in range(4)]
    assert "stopped after 4 of 6 frames: cannot read frame" in read_partial(out)["reason"]
    assert not (tmp_path / "o.mp4").exists() and list(tmp_path.glob(".o.tmp*")) == []
    # --max-frames stops before the bad frame: it is never read
    code, _, err = run(capsys, [*argv[:-2], "--max-frames", "4", "--overwrite"])
    assert code == 0, err
    assert pngs(out) == [f"{t:05d}.png" for t in range(4)] and read_partial(out) is None


def test_lock_refuses_a_second_writer(video, runtime, tmp_path, capsys):
    out = tmp_path / "out"
    holder = ResultFolder(out, {"run": "first"})
    holder.open()
    try:
        code, _, err = run(capsys, bundle_args(video, out, "--overwrite"))
        assert code == 2
        (line,) = err.strip().splitlines()
        assert "is being written by another run (process" in line and LOCK_FILE in line
        assert pngs(out) == []
    finally:
        holder.finish()
    assert run(capsys, bundle_args(video, out, "--overwrite"))[0] == 0


def test_overwrite_removes_stale_masks(video, runtime, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    write_mask(out / "00099.png", np.ones((48, 64), np.uint8))
    code, _, err = run(capsys, bundle_args(video, out))
    assert code == 2 and "is not empty" in err
    assert pngs(out) == ["00099.png"]
    assert run(capsys, bundle_args(video, out, "--overwrite"))[0] == 0
    assert pngs(out) == [f"{t:05d}.png" for t in range(T)]


def foreign_pngs(folder: Path, like: Path) -> dict[str, bytes]:
    """PNG-named files that ``segment`` does not write, in ``folder``; their bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "photo.png", format="JPEG")
    (folder / "99999.png").write_text("keep")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(folder / "grey.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "rgb.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "GIMP")  # the writer's format, saved by another program
    Image.open(like).save(folder / "annotation.png", pnginfo=info)
    (folder / "00007.PNG").write_bytes((like).read_bytes())  # not a name the writer gives
    plain = Image.open(like)  # the writer's image saved by Pillow without the writer's tag
    plain.info.clear()
    plain.save(folder / "00008.png")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_is_written_mask_knows_the_writers_pngs(video, tmp_path):
    mask = video.root / "annotations" / "00000.png"
    assert is_written_mask(mask)
    write_mask(tmp_path / "big.png", np.random.default_rng(0).integers(0, 255, (600, 500)))
    assert is_written_mask(tmp_path / "big.png")  # several IDAT chunks
    foreign_pngs(tmp_path / "f", mask)
    (tmp_path / "f" / "link.png").symlink_to(mask)
    (tmp_path / "f" / "cut.png").write_bytes(mask.read_bytes()[:-12])  # no IEND
    (tmp_path / "f" / "folder.png").mkdir()
    os.mkfifo(tmp_path / "f" / "fifo.png")  # opening it would block
    assert [p.name for p in sorted((tmp_path / "f").iterdir()) if is_written_mask(p)] == []
    assert not is_written_mask(tmp_path / "missing.png")


def test_overwrite_deletes_only_the_masks_it_wrote(video, runtime, tmp_path, capsys):
    out = tmp_path / "out"
    foreign = foreign_pngs(out, video.root / "annotations" / "00000.png")
    write_mask(out / "00099.png", np.ones((48, 64), np.uint8))
    (out / PARTIAL_MARKER).write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, stdout, err = run(capsys, bundle_args(video, out, "--overwrite"))
    assert code == 2 and stdout == ""
    (line,) = err.strip().splitlines()
    assert line == (
        f"dmm-deploy segment: error: --overwrite: --out {out} holds other things than masks "
        "written by dmm-deploy (00007.PNG, 00008.png, 99999.png and 4 more); they are not "
        "deleted: move them or choose another folder"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing deleted
    assert runtime.made == []  # refused before the segmenter was built
    for name in foreign:
        (out / name).unlink()
    assert run(capsys, bundle_args(video, out, "--overwrite"))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{t:05d}.png" for t in range(T)]


def test_export_model_checks_out_again_before_replacing_it(tmp_path, monkeypatch, capsys):
    """A file put into --out while the export ran is not deleted: the new bundle is moved in
    place only when --out still holds nothing but the earlier bundle."""
    pytest.importorskip("torch")
    from dmm_deploy.export import bundle

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "dmm-deploy-bundle", "v": "old"}))

    def export(net, dest, **kw):
        (Path(dest) / "manifest.json").write_text(json.dumps({"format": "dmm-deploy-bundle"}))
        (out / "NOTES.md").write_text("written while the export ran")

    monkeypatch.setattr(bundle, "export_bundle", export)
    argv = ["export-model", "--out", str(out), "--overwrite", "--random-weights",
            "--backbone", "resnet18", "--input-size", "64x64", "--matching-only"]  # fmt: skip
    code, _, err = run(capsys, argv)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "holds a bundle and files that export-model did not write (NOTES.md)" in line
    assert json.loads((out / "manifest.json").read_text())["v"] == "old"
    assert (out / "NOTES.md").read_text() == "written while the export ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary left


def test_progress_lines_when_not_a_terminal_and_quiet(video, runtime, tmp_path, capsys):
    argv = bundle_args(video, tmp_path / "a", "--progress-interval", "0")
    argv.remove("--no-progress")
    code, _, err = run(capsys, argv)
    lines = [ln for ln in err.splitlines() if ln.startswith("segment: ")]
    assert code == 0 and len(lines) == T
    assert lines[0].startswith(f"segment: 1/{T} frame (17%), ")
    assert lines[-1].startswith(f"segment: {T}/{T} frames (100%), ") and "frames/s" in lines[-1]
    code, stdout, err = run(capsys, ["-q", *bundle_args(video, tmp_path / "b")])
    assert code == 0 and stdout == "" and err == ""


def test_singular_words_void_ids_and_appledouble(video, runtime, tmp_path, capsys):
    frames = tmp_path / "frames"
    shutil.copytree(video.root / "frames", frames)
    (frames / "._00000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    mask = read_mask(video.root / "annotations" / "00000.png").copy()
    only1 = np.where(mask == 1, 1, 0).astype(np.uint8)
    only1[:2] = 255  # void: never an object
    write_mask(tmp_path / "m.png", only1)
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys,
        ["segment", "--bundle", str(video.bundle), "--frames", str(frames), "--mask",
         str(tmp_path / "m.png"), "--out", str(out), "--max-frames", "1", "--no-progress"],
    )  # fmt: skip
    assert code == 0, err
    assert "segmented 1 frame (64x48)" in stdout and "1 object [1]" in stdout
    assert 255 not in runtime.made[0].masks[0]
    assert pngs(out) == ["00000.png"]


class LiveSource(FrameSource):
    """A live source (like a camera): frames as they come, length unknown."""

    live = True
    fps = 10.0

    def __init__(self, frames: np.ndarray) -> None:
        self.path, self._frames = "rtsp://camera/stream", frames

    def __len__(self) -> int:
        return 0

    @property
    def size(self) -> tuple[int, int]:
        return self._frames.shape[1:3]

    def __iter__(self):
        for i, f in enumerate(self._frames):
            yield Frame(i, f"{i:05d}", f)


def test_ctrl_c_ends_a_live_stream_with_its_outputs_complete(
    video, runtime, tmp_path, capsys, monkeypatch
):
    import dmm_deploy.segment_job as job

    monkeypatch.setattr(job, "open_frames", lambda src: LiveSource(video.v.frames))
    runtime.fail_at = 3
    out = tmp_path / "out"
    argv = bundle_args(video, out, "--overlay", tmp_path / "live.png")
    argv[argv.index("--frames") : argv.index("--frames") + 2] = ["--video", "rtsp://camera/stream"]
    code, _, err = run(capsys, argv)
    assert code == 130
    assert "interrupted after 3 frames of the live stream" in err
    assert pngs(out) == ["00000.png", "00001.png", "00002.png"]
    assert not (out / PARTIAL_MARKER).exists() and (tmp_path / "live.png").is_file()


# -- the PyTorch path -------------------------------------------------------------------------

TINY = ["--random-weights", "--backbone", "resnet18", "--input-size", "64x112", "--no-progress"]


@pytest.fixture(scope="module")
def oracle_npz(video):
    pytest.importorskip("torch")
    from dmm_deploy.model import OracleProposals, save_precomputed

    v = video.v
    oracle = OracleProposals(v.labels, seed=0, jitter=1)
    npz = video.base / "oracle.npz"
    save_precomputed(npz, [oracle.detect(i, f) for i, f in enumerate(v.frames)], (48, 64))
    return npz


def torch_args(video, npz, out: Path, *extra) -> list[str]:
    return [
        "segment", "--frames", str(video.root / "frames"), "--annotations",
        str(video.root / "annotations"), "--out", str(out), "--proposals", f"precomputed:{npz}",
        *TINY, *map(str, extra),
    ]  # fmt: skip


def test_torch_resume_after_ctrl_c_equals_an_uninterrupted_run(
    video, oracle_npz, tmp_path, capsys, monkeypatch
):
    """The recurrent model (templates, previous masks, ConvLSTM state) resumed exactly."""
    import dmm_deploy.data.frames as frames_mod

    full = tmp_path / "full"
    code, stdout, err = run(capsys, torch_args(video, oracle_npz, full))
    assert code == 0, err
    assert "warning: random weights for DMM-Net" in err
    real = frames_mod.read_frame

    def interrupted(path):
        if Path(path).stem == "00003":
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(frames_mod, "read_frame", interrupted)
    out = tmp_path / "out"
    code, _, err = run(capsys, torch_args(video, oracle_npz, out))
    assert code == 130 and f"interrupted after 3 of {T} frames" in err
    assert pngs(out) == ["00000.png", "00001.png", "00002.png"]
    monkeypatch.setattr(frames_mod, "read_frame", real)
    code, stdout, err = run(capsys, torch_args(video, oracle_npz, out, "--resume"))
    assert code == 0, err
    assert "resumed: 3 frames replayed" in stdout and "differed" not in err
    np.testing.assert_array_equal(read_label_dir(out)[1], read_label_dir(full)[1])


@pytest.mark.parametrize("kind", ["garbage", "other-model"])
def test_unusable_maskrcnn_weights_are_one_line(video, tmp_path, capsys, kind):
    torch = pytest.importorskip("torch")
    weights = tmp_path / "w.pth"
    if kind == "garbage":
        weights.write_bytes(b"this is not a pickle" * 10)
    else:
        torch.save(torch.nn.Linear(3, 2).state_dict(), weights)
    out = tmp_path / "out"
    argv = [
        "segment", "--frames", str(video.root / "frames"), "--mask",
        str(video.root / "annotations" / "00000.png"), "--out", str(out),
        "--maskrcnn-weights", str(weights), "--detector-size", "64", *TINY,
    ]  # fmt: skip
    code, _, err = run(capsys, argv)
    lines = [ln for ln in err.splitlines() if ": warning: " not in ln]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(
        f"dmm-deploy segment: error: --maskrcnn-weights {weights}: not usable"
    )
    assert not out.exists()  # created for the lock, removed again: nothing was written


def test_garbage_checkpoint_is_one_line(video, oracle_npz, tmp_path, capsys):
    ckpt = tmp_path / "trainer.pt"
    ckpt.write_bytes(b"\x80\x04 not a checkpoint")
    out = tmp_path / "out"
    argv = torch_args(video, oracle_npz, out, "--checkpoint", ckpt)
    argv.remove("--random-weights")
    code, _, err = run(capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("dmm-deploy segment: error: ") and str(ckpt) in lines[0]
    assert not out.exists()


def test_frame_image_written_as_png_is_read_back(tmp_path):
    """Atomic writes leave exactly the target file (no temporary beside it)."""
    write_mask(tmp_path / "a.png", np.eye(4, dtype=np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "P"


def test_compat_default_follows_the_checkpoint_and_reaches_the_model(video, oracle_npz):
    import dataclasses

    from dmm_deploy.model import DMMConfig
    from dmm_deploy.segment_job import SegmentOptions, build_model

    opts = SegmentOptions(
        frames=video.root / "frames", out=video.base / "unused", mask=video.base / "m.png",
        proposals="precomputed", precomputed=oracle_npz, random_weights=True,
        backbone="resnet18", input_size=(64, 112),
    )  # fmt: skip
    assert opts.resolved_compat == "default"
    assert dataclasses.replace(opts, checkpoint=video.base).resolved_compat == "original"
    assert dataclasses.replace(opts, checkpoint=video.base, compat="default").resolved_compat == (
        "default"
    )
    if "compat" not in {f.name for f in dataclasses.fields(DMMConfig)}:
        pytest.skip("this model version has no DMMConfig.compat")
    assert build_model(opts).cfg.compat == "default"
    assert build_model(dataclasses.replace(opts, compat="original")).cfg.compat == "original"


def test_killed_run_leaves_a_resumable_folder(video, runtime, tmp_path, capsys):
    """SIGKILL (no chance to clean up): the kernel drops the lock, the marker stays; a plain
    rerun is refused and --resume completes the folder exactly."""
    import signal
    import time

    out = tmp_path / "out"
    script = f"""
import sys, time, types
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_cli_runs import ShiftSegmenter
class Slow(ShiftSegmenter):
    def step(self, frame, new_masks=None):
        time.sleep(0.3 if self.calls < 2 else 60)
        return super().step(frame, new_masks)
m = types.ModuleType("dmm_deploy.runtime.jobs")
m.build_segmenter = lambda opts: Slow()
sys.modules["dmm_deploy.runtime.jobs"] = m
from dmm_deploy.cli import main
main({bundle_args(video, out)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while len(pngs(out)) < 2 if out.is_dir() else True:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_partial(out)["status"] == "running"
    code, _, err = run(capsys, bundle_args(video, out))
    assert code == 2 and "unfinished run, 2 of 6 frames written" in err
    code, _, err = run(capsys, bundle_args(video, out, "--resume"))
    assert code == 0, err
    assert hidden(out) == [] and not (out / PARTIAL_MARKER).exists()
    full = tmp_path / "full"
    run(capsys, bundle_args(video, full))
    np.testing.assert_array_equal(read_label_dir(out)[1], read_label_dir(full)[1])


def test_video_url_is_read_live_through_ffmpeg(runtime, tmp_path, capsys, shared_dir):
    """A URL goes to ffmpeg and is read as a live source (no length, no resume)."""
    pytest.importorskip("imageio_ffmpeg")
    mp4 = shared_dir / "data" / "vos_samples" / "example.mp4"
    if not mp4.is_file():
        pytest.skip(f"sample video not found at {mp4}")
    mask = np.zeros((480, 640), np.uint8)
    mask[100:300, 200:400] = 1
    write_mask(tmp_path / "m.png", mask)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    argv = ["segment", "--bundle", str(bundle), "--video", mp4.as_uri(), "--mask",
            str(tmp_path / "m.png"), "--out", str(tmp_path / "out"), "--max-frames", "3",
            "--progress-interval", "0"]  # fmt: skip
    code, stdout, err = run(capsys, argv)
    assert code == 0, err
    assert "segmented 3 frames (640x480)" in stdout
    assert "segment: 1 frame, " in err and "segment: 3 frames, " in err  # no total: live
    assert pngs(tmp_path / "out") == ["00000.png", "00001.png", "00002.png"]
