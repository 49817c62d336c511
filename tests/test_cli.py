"""Hostile command lines: every bad input is one line naming the argument or file, exit 2,
no traceback, and the output folder is left as it was (never created, never changed).

All cases fail before any model is built (in-process ``cli.main``, torch is not needed for
them); the runs that get further (lock, Ctrl-C, resume, bundle) are in ``test_cli_runs.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmm_deploy.cli import COMMANDS, main
from dmm_deploy.data import make_synthetic_video, write_label_dir, write_mask
from dmm_deploy.data.output import PARTIAL_MARKER

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Small inputs shared by the cases (read-only): 6 frames of 48 x 64, masks, files."""
    base = tmp_path_factory.mktemp("world")
    v = make_synthetic_video(6, 48, 64, num_objects=3, late_objects=1, seed=0)
    root = v.write(base / "video")
    w = {
        "frames": root / "frames",
        "ann": root / "annotations",
        "mask": root / "annotations" / "00000.png",
        "labels": root / "labels",
    }
    w["npz"] = base / "p.npz"
    w["npz"].write_bytes(b"not read by any case")
    w["file"] = base / "a_file.txt"
    w["file"].write_text("x")
    w["big_mask"] = base / "big.png"
    write_mask(w["big_mask"], np.ones((49, 64), np.uint8))
    w["empty_mask"] = base / "empty.png"
    write_mask(w["empty_mask"], np.zeros((48, 64), np.uint8))
    w["void_mask"] = base / "void.png"
    write_mask(w["void_mask"], np.full((48, 64), 255, np.uint8))
    w["rgb_mask"] = base / "rgb.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(w["rgb_mask"])
    w["bad_png"] = base / "corrupt.png"
    w["bad_png"].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    w["dup"] = base / "dup_frames"
    w["dup"].mkdir()
    for name in ("00000.jpg", "00000.png", "00001.png"):
        Image.fromarray(v.frames[0]).save(w["dup"] / name)
    w["hidden_only"] = base / "hidden_only"
    w["hidden_only"].mkdir()
    (w["hidden_only"] / "._00000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (w["hidden_only"] / ".DS_Store").write_bytes(b"x")
    w["bad_ann"] = base / "bad_ann"
    write_mask(w["bad_ann"] / "00000.png", v.labels[0])
    write_mask(w["bad_ann"] / "00003.png", np.zeros((40, 64), np.uint8))
    w["late_ann"] = base / "late_ann"
    write_mask(w["late_ann"] / "00002.png", v.labels[2])
    w["png_dir"] = base / "dir.png"
    w["png_dir"].mkdir()
    w["bundle_empty"] = base / "bundle_empty"
    w["bundle_empty"].mkdir()
    w["bundle"] = base / "bundle"
    w["bundle"].mkdir()
    (w["bundle"] / "manifest.json").write_text("{}")
    w["gt"] = base / "gt"
    write_label_dir(w["gt"] / "seq", v.labels)
    w["pred"] = base / "pred"
    pred = v.labels.copy()
    pred[2, 0, 0] = 9  # an id that is no ground-truth object
    write_label_dir(w["pred"] / "seq", pred)
    return w


def seg(w: dict[str, Path], dest: Path, **over) -> list[str]:
    """A ``segment`` command line that passes every check, with options replaced
    (``None`` drops an option, ``True`` adds a flag)."""
    opts: dict[str, object] = {
        "--frames": w["frames"],
        "--mask": w["mask"],
        "--out": dest,
        "--random-weights": True,
        "--proposals": f"precomputed:{w['npz']}",
        "--no-progress": True,
    }
    for k, v in over.items():
        key = "--" + k.replace("_", "-")
        opts.pop(key, None)
        if v is not None:
            opts[key] = v
    argv = ["segment"]
    for k, v in opts.items():
        argv += [k] if v is True else [k, str(v)]
    return argv


def listing(path: Path) -> list[str] | None:
    """The folder's entries (None: it does not exist)."""
    return sorted(os.listdir(path)) if path.is_dir() else None


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_error(err: str, prefix: str = "dmm-deploy segment: error: ") -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and ": warning: " not in ln]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    return lines[0]


# Each case: id, a function (world, out folder) -> argv, a regex the error line must match.
# The out folder does not exist before the case unless the id is in PREPARED.
CASES = [
    ("no-command", lambda w, o: [], r"dmm-deploy: error: .*COMMAND"),
    ("unknown-command", lambda w, o: ["bogus"], r"invalid choice: 'bogus'"),
    ("no-out", lambda w, o: seg(w, o, out=None), r"required: --out"),
    ("frames-and-video", lambda w, o: seg(w, o, video="v.mp4"), r"--video: not allowed with"),
    ("no-source", lambda w, o: seg(w, o, frames=None), r"one of the arguments --frames --video"),
    ("max-frames-text", lambda w, o: seg(w, o, max_frames="ten"), r"--max-frames: invalid int"),
    ("overwrite-and-resume", lambda w, o: seg(w, o, overwrite=True, resume=True), r"--resume: not allowed with argument --overwrite"),
    ("compat-choice", lambda w, o: seg(w, o, compat="new"), r"--compat: invalid choice"),
    ("backend-choice", lambda w, o: seg(w, o, backend="tvm"), r"--backend: invalid choice"),
    ("proposals-kind", lambda w, o: seg(w, o, proposals="rcnn"), r"--proposals must be 'maskrcnn' or 'precomputed:FILE\.npz'"),
    ("input-size-format", lambda w, o: seg(w, o, input_size="255by448"), r"--input-size must be HEIGHTxWIDTH"),
    ("input-size-small", lambda w, o: seg(w, o, input_size="16x448"), r"--input-size must be at least 32x32"),
    ("input-size-huge", lambda w, o: seg(w, o, input_size="10000x10000"), r"--input-size must be at most 2048x2048"),
    ("detector-size-huge", lambda w, o: seg(w, o, detector_size=100000, proposals="maskrcnn"), r"--detector-size must be in 32\.\.2048"),
    ("detector-size-small", lambda w, o: seg(w, o, detector_size=8), r"--detector-size must be in 32\.\.2048"),
    ("backbone", lambda w, o: seg(w, o, backbone="vgg16"), r"--backbone must be one of .*resnet101"),
    ("max-frames-zero", lambda w, o: seg(w, o, max_frames=0), r"--max-frames must be >= 1"),
    ("threads-zero", lambda w, o: seg(w, o, threads=0), r"--threads must be in 1\.\.256"),
    ("device", lambda w, o: seg(w, o, device="tpu"), r"--device must be 'cpu' or 'cuda'"),
    ("maskrcnn-version", lambda w, o: seg(w, o, maskrcnn_version="v3"), r"--maskrcnn-version must be 'v1' or 'v2'"),
    ("overlay-suffix", lambda w, o: seg(w, o, overlay="x.gif"), r"--overlay must end with \.png .* or \.mp4"),
    ("progress-interval", lambda w, o: seg(w, o, progress_interval=-1), r"--progress-interval must be >= 0"),
    ("no-first-annotation", lambda w, o: seg(w, o, mask=None), r"--mask PNG \(or --annotations DIR\)"),
    ("no-weights", lambda w, o: seg(w, o, random_weights=None, proposals=None), r"no weights for DMM-Net and Mask R-CNN: pass --checkpoint .* --maskrcnn-weights .* --random-weights"),
    ("frames-missing", lambda w, o: seg(w, o, frames=w["frames"].parent / "nope"), r"--frames: frames not found: .*nope"),
    ("frames-is-file", lambda w, o: seg(w, o, frames=w["file"]), r"--frames must be a folder of images, got the file .*a_file\.txt \(use --video\)"),
    ("video-is-folder", lambda w, o: seg(w, o, frames=None, video=w["frames"]), r"--video must be a video file, a stream URL or a device, got the folder"),
    ("video-missing", lambda w, o: seg(w, o, frames=None, video=w["file"].parent / "clip.mp4"), r"--video not found: .*clip\.mp4 \(expected a video file, a stream URL"),
    ("mask-missing", lambda w, o: seg(w, o, mask=w["file"].parent / "m.png"), r"--mask not found: .*m\.png \(expected the first frame's annotation, a PNG file\)"),
    ("mask-size", lambda w, o: seg(w, o, mask=w["big_mask"]), r"big\.png is 64x49 .* frames are 64x48"),
    ("mask-empty", lambda w, o: seg(w, o, mask=w["empty_mask"]), r"--mask .*empty\.png holds no object"),
    ("mask-void-only", lambda w, o: seg(w, o, mask=w["void_mask"]), r"--mask .*void\.png holds no object \(only background 0 and void 255\)"),
    ("mask-rgb", lambda w, o: seg(w, o, mask=w["rgb_mask"]), r"rgb\.png is a 'RGB' image; expected a palette"),
    ("mask-corrupt", lambda w, o: seg(w, o, mask=w["bad_png"]), r"cannot read mask .*corrupt\.png"),
    ("annotations-missing", lambda w, o: seg(w, o, annotations=w["file"].parent / "noann"), r"--annotations not found: .*noann \(expected a folder of PNG annotations\)"),
    ("annotations-is-file", lambda w, o: seg(w, o, annotations=w["mask"]), r"--annotations .* is a file: expected a folder of PNG annotations"),
    ("mask-is-folder", lambda w, o: seg(w, o, mask=w["frames"]), r"--mask .*frames is a folder: expected the first frame's annotation, a PNG file"),
    ("video-not-a-video", lambda w, o: seg(w, o, frames=None, video=w["file"]), r"--video: frames must be a folder of images or a video file .*a_file\.txt"),
    ("precomputed-is-folder", lambda w, o: seg(w, o, proposals=f"precomputed:{w['frames']}"), r"--proposals precomputed:.*frames is a folder: expected a \.npz"),
    ("out-empty", lambda w, o: seg(w, o, out=""), r"--out must name a folder, got ''"),
    ("bundle-is-file", lambda w, o: seg(w, o, bundle=w["file"], random_weights=None), r"--bundle .*a_file\.txt is a file: expected a folder written by dmm-deploy export-model"),
    ("tensorrt-on-cpu", lambda w, o: seg(w, o, bundle=w["bundle"], random_weights=None, backend="tensorrt"), r"--backend tensorrt runs on --device cuda only"),
    ("annotations-size", lambda w, o: seg(w, o, annotations=w["bad_ann"]), r"00003\.png is 64x40 .* frames are 64x48"),
    ("annotations-no-first", lambda w, o: seg(w, o, mask=None, annotations=w["late_ann"]), r"no annotation for the first frame '00000'"),
    ("frames-duplicate-stems", lambda w, o: seg(w, o, frames=w["dup"]), r"dup_frames holds two images named '00000' \(00000\.jpg and 00000\.png\)"),
    ("frames-hidden-only", lambda w, o: seg(w, o, frames=w["hidden_only"]), r"no images .* in frame folder .*hidden_only"),
    ("checkpoint-missing", lambda w, o: seg(w, o, checkpoint=w["file"].parent / "ckpt"), r"--checkpoint not found: .*ckpt"),
    ("precomputed-missing", lambda w, o: seg(w, o, proposals=f"precomputed:{w['file'].parent / 'no.npz'}"), r"precomputed file not found: .*no\.npz"),
    ("maskrcnn-weights-missing", lambda w, o: seg(w, o, proposals=None, maskrcnn_weights=w["file"].parent / "mrcnn.pth", random_weights=None, checkpoint=w["file"]), r"--maskrcnn-weights file not found: .*mrcnn\.pth"),
    ("out-is-file", lambda w, o: seg(w, o, out=w["file"]), r"--out .*a_file\.txt is a file; expected a folder"),
    ("out-below-file", lambda w, o: seg(w, o, out=w["file"] / "sub"), r"--out .*a_file\.txt/sub lies below the file .*a_file\.txt"),
    ("out-is-frames", lambda w, o: seg(w, o, out=w["frames"]), r"--out .*frames is the --frames folder"),
    ("out-not-empty", lambda w, o: seg(w, o), r"--out .* is not empty \(1 entries, e\.g\. notes\.txt\): pass --overwrite"),
    ("out-partial-not-empty", lambda w, o: seg(w, o), r"is not empty \(unfinished run, 2 of 6 frames written \(interrupted after 2 of 6 frames\); .* --resume to continue it"),
    ("overwrite-foreign-files", lambda w, o: seg(w, o, overwrite=True), r"--overwrite: --out .* holds other things than masks written by dmm-deploy \(notes\.txt\); they are not deleted"),
    ("overwrite-foreign-pngs", lambda w, o: seg(w, o, overwrite=True), r"--overwrite: --out .* holds other things than masks written by dmm-deploy \(99999\.png, gimp\.png, grey\.png and 1 more\); they are not deleted"),
    ("overwrite-deletes-mask", lambda w, o: seg(w, o, overwrite=True, mask=o / "00000.png"), r"--overwrite would delete --mask .*00000\.png, which lies in --out"),
    ("resume-finished-run", lambda w, o: seg(w, o, resume=True), r"--resume: --out .* holds no unfinished run"),
    ("resume-other-settings", lambda w, o: seg(w, o, resume=True, input_size="96x128"), r"--resume: the unfinished run in .* used other settings \(input_size: \[64, 112\], now \[96, 128\]\)"),
    ("resume-live-source", lambda w, o: seg(w, o, frames=None, video="rtsp://127.0.0.1:9/cam", resume=True), r"--resume: rtsp://127\.0\.0\.1:9/cam is a live source"),
    ("overlay-is-folder", lambda w, o: seg(w, o, overlay=w["png_dir"]), r"--overlay .*dir\.png is a folder; expected a file name"),
    ("overlay-below-file", lambda w, o: seg(w, o, overlay=w["file"] / "o.mp4"), r"--overlay .*o\.mp4 lies below the file .*a_file\.txt"),
    ("overlay-exists", lambda w, o: seg(w, o, overlay=w["big_mask"]), r"--overlay .*big\.png exists: pass --overwrite"),
    ("overlay-in-out", lambda w, o: seg(w, o, overlay=o / "strip.png"), r"--overlay .*strip\.png lies in --out: a PNG strip would be mixed with the masks"),
    ("overlay-is-mask", lambda w, o: seg(w, o, overlay=w["mask"], overwrite=True), r"--overlay .* is the --mask file; choose another file"),
    ("overlay-in-frames", lambda w, o: seg(w, o, overlay=w["frames"] / "strip.png"), r"--overlay .*strip\.png lies in the --frames folder"),
    ("overlay-exists-resume", lambda w, o: seg(w, o, overlay=w["big_mask"], resume=True, input_size="64x112"), r"--overlay .*big\.png exists: pass --overwrite"),
    ("resume-new-out", lambda w, o: seg(w, o, resume=True), r"--resume: --out .* does not exist: there is no unfinished run"),
    ("bundle-missing", lambda w, o: seg(w, o, bundle=w["file"].parent / "nobundle", random_weights=None), r"--bundle not found: .*nobundle \(expected a folder\)"),
    ("bundle-no-manifest", lambda w, o: seg(w, o, bundle=w["bundle_empty"], random_weights=None), r"--bundle .*bundle_empty has no manifest\.json: expected a folder written by dmm-deploy export-model"),
    ("bundle-and-backbone", lambda w, o: seg(w, o, bundle=w["bundle"], random_weights=None, backbone="resnet18"), r"--backbone does not go with --bundle: the bundle fixes the model"),
    ("bundle-and-checkpoint", lambda w, o: seg(w, o, bundle=w["bundle"], random_weights=None, checkpoint=w["file"]), r"--checkpoint does not go with --bundle"),
    ("bundle-and-random-weights", lambda w, o: seg(w, o, bundle=w["bundle"]), r"--random-weights does not go with --bundle"),
    ("backend-without-bundle", lambda w, o: seg(w, o, backend="tensorrt"), r"--backend goes with --bundle only"),
    ("export-out-folder", lambda w, o: ["export", "--out", str(w["frames"])], r"dmm-deploy export: error: argument --out: expected a file name, got the folder .*frames"),
    ("export-out-slash", lambda w, o: ["export", "--out", f"{o}/"], r"dmm-deploy export: error: argument --out: expected a file name, got the folder .*out/"),
    ("export-out-below-file", lambda w, o: ["export", "--out", str(w["file"] / "m.onnx")], r"dmm-deploy export: error: --out .*m\.onnx lies below the file .*a_file\.txt"),
    ("eval-csv-folder", lambda w, o: ["eval", "--gt", str(w["gt"]), "--pred", str(w["pred"]), "--csv", str(w["frames"])], r"dmm-deploy eval: error: --csv .*frames is a folder; expected a file name"),
    ("eval-csv-below-file", lambda w, o: ["eval", "--gt", str(w["gt"]), "--pred", str(w["pred"]), "--csv", str(w["file"] / "r.csv")], r"dmm-deploy eval: error: --csv .*r\.csv lies below the file"),
    ("eval-strict-unknown-id", lambda w, o: ["eval", "--gt", str(w["gt"]), "--pred", str(w["pred"]), "--strict"], r"dmm-deploy eval: error: sequence 'seq': predicted ids \[3, 9\] are not ground-truth objects .*refused by --strict"),  # 3: a late object (DAVIS scores the first frame's)
    ("eval-bound-th", lambda w, o: ["eval", "--gt", str(w["gt"]), "--pred", str(w["pred"]), "--bound-th", "0"], r"dmm-deploy eval: error: --bound-th must be > 0"),
    ("export-model-overwrite-foreign", lambda w, o: ["export-model", "--out", str(o), "--overwrite", "--random-weights", "--backbone", "resnet18", "--input-size", "64x64"], r"dmm-deploy export-model: error: --out .*out holds a bundle and files that export-model did not write \(NOTES\.md, trt\); they are not deleted"),
    ("eval-gt-missing", lambda w, o: ["eval", "--gt", str(w["file"].parent / "nogt"), "--pred", str(w["pred"])], r"dmm-deploy eval: error: ground-truth folder not found: .*nogt"),
]  # fmt: skip


def _partial(w: dict[str, Path], o: Path) -> None:
    """An unfinished run's folder, as ``segment`` leaves it (its settings: ``seg(w, o)``)."""
    from dmm_deploy.cli import build_parser
    from dmm_deploy.segment_job import options_from_args

    args = build_parser("segment").parse_args(seg(w, o, input_size="64x112"))
    o.mkdir()
    write_mask(o / "00000.png", np.zeros((48, 64), np.uint8))
    write_mask(o / "00001.png", np.zeros((48, 64), np.uint8))
    marker = {"status": "partial", "frames_written": 2, "total": 6,
              "reason": "interrupted after 2 of 6 frames",
              "settings": options_from_args(args).settings()}  # fmt: skip
    (o / PARTIAL_MARKER).write_text(json.dumps(marker))


def _with_notes(w: dict[str, Path], o: Path) -> None:
    o.mkdir()
    (o / "notes.txt").write_text("mine")


def _finished(w: dict[str, Path], o: Path) -> None:
    o.mkdir()
    write_mask(o / "00000.png", np.zeros((4, 4), np.uint8))


def _foreign_pngs(w: dict[str, Path], o: Path) -> None:
    """A finished run's mask beside PNGs that ``segment`` did not write."""
    from PIL import PngImagePlugin

    _finished(w, o)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(o / "photo.png", format="JPEG")
    (o / "99999.png").write_text("keep")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(o / "grey.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "GIMP")  # a palette PNG, DAVIS palette, saved by another program
    Image.open(w["mask"]).save(o / "gimp.png", pnginfo=info)


def _bundle(o: Path) -> None:
    """A bundle as export-model writes it, with the runtime's cache folder."""
    o.mkdir()
    stages = {"encoder": {"file": "encoder.onnx"}, "match": {"file": "match.onnx"}}
    (o / "manifest.json").write_text(json.dumps({"format": "dmm-deploy-bundle", "stages": stages}))
    (o / "encoder.onnx").write_bytes(b"graph")
    (o / "match.onnx").write_bytes(b"graph")
    (o / "engines").mkdir()
    (o / "engines" / "encoder-ort-cpu-0123.onnx").write_bytes(b"cache")


def _bundle_with_notes(w: dict[str, Path], o: Path) -> None:
    _bundle(o)
    (o / "NOTES.md").write_text("precious")
    (o / "trt").mkdir()
    (o / "trt" / "x.engine").write_bytes(b"e")


PREPARED = {  # out folders that exist before the case
    "out-not-empty": _with_notes,
    "overwrite-foreign-files": _with_notes,
    "overwrite-foreign-pngs": _foreign_pngs,
    "export-model-overwrite-foreign": _bundle_with_notes,
    "resume-finished-run": _finished,
    "overwrite-deletes-mask": _finished,
    "out-partial-not-empty": _partial,
    "resume-other-settings": _partial,
    "overlay-exists-resume": _partial,
}


def test_there_are_at_least_40_hostile_cases():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_case_is_one_line_exit_2_output_untouched(
    request, world, tmp_path, capsys, argv, pattern
):
    import re

    case = request.node.callspec.id
    out = tmp_path / "out"
    if case in PREPARED:
        PREPARED[case](world, out)
    before = listing(out)
    before_bytes = {n: (out / n).read_bytes() for n in before or [] if (out / n).is_file()}
    code, stdout, err = run_main(capsys, argv(world, out))
    assert code == 2, err
    prefix = "dmm-deploy" if argv(world, out)[:1] != ["segment"] else "dmm-deploy segment"
    line = assert_one_error(err, prefix)
    assert re.search(pattern, line), line
    assert stdout == ""  # nothing printed before the check (eval: no table)
    assert listing(out) == before  # never created, never changed
    assert {n: (out / n).read_bytes() for n in before or [] if (out / n).is_file()} == before_bytes


@pytest.mark.parametrize(
    ("change", "foreign"),
    [
        (None, None),
        (lambda o: (o / "NOTES.md").write_text("mine"), "NOTES.md"),
        (lambda o: (o / "old.onnx").write_bytes(b"a graph the manifest does not name"), "old.onnx"),
        (lambda o: os.symlink(o / "encoder.onnx", o / "decoder.onnx"), "decoder.onnx"),
        (lambda o: shutil.rmtree(o / "engines") or (o / "engines").write_text("x"), "engines"),
        (lambda o: (o / "match.onnx").unlink() or (o / "match.onnx").mkdir(), "match.onnx"),
    ],
    ids=["bundle", "notes", "unnamed-graph", "link", "engines-file", "stage-folder"],
)
def test_export_model_replaces_only_what_an_export_wrote(tmp_path, change, foreign):
    """--overwrite replaces a bundle folder holding manifest.json, the stage files it names
    and the runtime's engines/ cache; anything else is named and nothing is deleted."""
    from dmm_deploy.export.bundle_job import check_out

    out = tmp_path / "out"
    _bundle(out)
    if change is not None:
        change(out)
    before = listing(out)
    for overwrite in (True, False):
        if foreign is None and overwrite:
            check_out(out, overwrite)
            continue
        with pytest.raises(ValueError) as e:
            check_out(out, overwrite)
        if foreign is None:
            assert str(e.value) == f"--out {out} holds a bundle: pass --overwrite to replace it"
        else:
            assert str(e.value) == (
                f"--out {out} holds a bundle and files that export-model did not write "
                f"({foreign}); they are not deleted: move them or choose a new or empty folder"
            )
    assert listing(out) == before


@pytest.mark.skipif(
    os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root may write anywhere"
)
def test_out_not_writable(world, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_main(capsys, seg(world, locked / "out"))
    finally:
        locked.chmod(0o700)
    assert code == 2
    assert "no permission to write in" in assert_one_error(err)
    assert listing(locked) == []


def test_url_is_not_rejected_as_a_missing_file(world, tmp_path, capsys):
    """A URL goes to ffmpeg (which answers for it), not to a 'file not found' check."""
    pytest.importorskip("imageio_ffmpeg")
    url = f"file://{tmp_path}/nothing-here.mp4"
    code, _, err = run_main(capsys, seg(world, tmp_path / "out", frames=None, video=url))
    line = assert_one_error(err)
    assert code == 2 and "cannot read video file://" in line and "not found: " not in line
    assert listing(tmp_path / "out") is None


# -- the console script itself -----------------------------------------------------------------


def test_version_and_help_do_not_import_torch(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("dmm-deploy 0.")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for name, cmd in COMMANDS.items():
        assert name in out and cmd.help[:20] in out


def test_python_m_usage_errors_never_import_torch(tmp_path):
    """One subprocess: ``python -m dmm_deploy`` answers usage and input errors without torch."""
    script = (
        "import sys\n"
        "from dmm_deploy.cli import main\n"
        "codes = []\n"
        "for argv in (['segment', '--frames', 'x'], ['segment', '--frames', 'nope', '--mask',"
        " 'm.png', '--out', 'o', '--random-weights'], ['eval', '--gt', 'a', '--pred', 'b'],"
        " ['segment', '--help'], ['export', '--help'], ['export', '--n-grad', '0'],"
        " ['export', '--out', 'o.onnx', '--static', '1x65x10', '--plugin'],"
        " ['trt-build', '--help']):\n"
        "    try:\n"
        "        codes.append(main(argv))\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "import dmm_deploy\n"
        "print(codes, 'torch' in sys.modules, 'onnxruntime' in sys.modules)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    want = "[2, 2, 2, 0, 0, 2, 2, 0] False False"
    assert r.stdout.strip().splitlines()[-1] == want, r.stdout + r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "dmm_deploy", "-q", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.startswith("dmm-deploy ")


def test_package_import_is_light_and_matcher_still_reachable():
    script = (
        "import sys, dmm_deploy\n"
        "light = 'torch' not in sys.modules\n"
        "from dmm_deploy import dmm_match\n"
        "print(light, callable(dmm_match), dmm_deploy.dmm_match is dmm_match)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["True", "True", "True"], r.stderr


def test_backbones_listed_by_the_job_are_the_models():
    torch = pytest.importorskip("torch")  # noqa: F841
    from dmm_deploy.model import BACKBONES
    from dmm_deploy.segment_job import BACKBONES as JOB_BACKBONES

    assert set(JOB_BACKBONES) == set(BACKBONES)


@pytest.fixture
def fake_command(monkeypatch):
    """A command registered the way every command is: one entry naming a module that has
    ``add_args`` and ``run``."""
    import types

    from dmm_deploy.cli import Command

    module = types.ModuleType("fake_cli_command")
    seen = {}

    def add_args(p):
        p.add_argument("--fail", choices=("interrupt", "permission", "value", "memory", "bug"))

    def run(args):
        seen["verbosity"] = args.verbosity
        if args.fail == "memory":
            raise MemoryError("cannot allocate 9 GiB")
        if args.fail == "bug":
            raise RuntimeError("a bug")
        if args.fail == "interrupt":
            raise KeyboardInterrupt
        if args.fail == "permission":
            raise PermissionError(13, "Permission denied", "/somewhere/file.onnx")
        if args.fail == "value":
            raise ValueError("--thing must be positive,\ngot -1")
        print("ran")
        return 0

    module.add_args, module.run = add_args, run
    monkeypatch.setitem(sys.modules, "fake_cli_command", module)
    monkeypatch.setitem(COMMANDS, "fake", Command("a command for tests", "fake_cli_command"))
    return seen


def test_registry_errors_interrupts_and_verbosity(fake_command, capsys):
    assert main(["fake"]) == 0 and capsys.readouterr().out == "ran\n"
    assert fake_command["verbosity"] == 0
    assert main(["-v", "fake", "-v"]) == 0 and fake_command["verbosity"] == 2
    assert main(["fake", "-q"]) == 0 and fake_command["verbosity"] == -1
    capsys.readouterr()
    assert main(["fake", "--fail", "interrupt"]) == 130
    assert capsys.readouterr().err == "dmm-deploy fake: interrupted\n"
    assert main(["fake", "--fail", "permission"]) == 2
    assert capsys.readouterr().err == (
        "dmm-deploy fake: error: Permission denied: /somewhere/file.onnx\n"
    )
    assert main(["fake", "--fail", "value"]) == 2
    assert capsys.readouterr().err == "dmm-deploy fake: error: --thing must be positive,; got -1\n"
    assert main(["fake", "-v", "--fail", "value"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: --thing must be positive,; got -1\n")
    assert main(["fake", "--fail", "memory"]) == 1
    assert capsys.readouterr().err == (
        "dmm-deploy fake: error: out of memory (cannot allocate 9 GiB)\n"
    )
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        main(["fake", "--fail", "bug"])


def test_a_missing_optional_dependency_is_one_line_naming_its_extra(tmp_path):
    """Without torch (as after ``pip install -e ".[runtime]"``) a command that needs it ends
    with one line naming the extra, exit 2; a missing module that no extra provides is a bug
    and keeps its traceback."""
    from dmm_deploy.cli import _missing_extra

    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from dmm_deploy.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for args in (["export-model", "--out", str(tmp_path / "b"), "--random-weights"],
                 ["export", "--out", str(tmp_path / "m.onnx")]):  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == [
            f"dmm-deploy {args[0]}: error: this needs torch, which is not installed: "
            "pip install 'dmm-deploy[cpu]'"
        ]
    assert not (tmp_path / "b").exists() and not (tmp_path / "m.onnx").exists()
    assert _missing_extra(ModuleNotFoundError("x", name="tritonclient.http")).endswith("[serve]'")
    assert _missing_extra(ModuleNotFoundError("x", name="dmm_deploy.nothing")) is None
