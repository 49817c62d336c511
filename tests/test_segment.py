"""``dmm-deploy segment`` end to end, and the J&F of the matching-only mode with oracle
proposals on generated videos (several objects, occlusion, an object entering later).

The CLI runs use random weights at tiny sizes (ResNet-18, 64 x 112 input, a small Mask R-CNN
input or precomputed proposals): the output files are checked, not their quality.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmm_deploy.cli import main
from dmm_deploy.data import (
    davis_palette,
    make_synthetic_video,
    read_label_dir,
    read_mask,
    write_mask,
)
from dmm_deploy.eval import evaluate_dirs, evaluate_sequences
from dmm_deploy.model import (
    Detections,
    DMMConfig,
    DMMNet,
    OracleProposals,
    PrecomputedProposals,
    VideoSegmenter,
    original_key_map,
    save_precomputed,
)
from dmm_deploy.segment_job import parse_proposals, parse_size

TINY = ["--backbone", "resnet18", "--input-size", "64x112", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def samples(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "vos_samples"
    if not path.is_dir():
        pytest.skip(f"sample videos not found at {path}")
    return path


def random_detections(n_frames: int, size: tuple[int, int], seed: int = 0) -> list[Detections]:
    """Box detections with random boxes and 28 x 28 masks, ten per frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n_frames):
        xy = rng.uniform(0, 0.7, (10, 2)) * (w, h)
        wh = rng.uniform(0.1, 0.3, (10, 2)) * (w, h)
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        masks = rng.uniform(0, 1, (10, 28, 28)).astype(np.float32)
        out.append(Detections(boxes, rng.uniform(0, 1, 10).astype(np.float32), masks, "box"))
    return out


def run_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = main(["segment", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_palette_pngs(folder: Path, names: list[str], size_wh: tuple[int, int]) -> None:
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(f"{n}.png" for n in names)
    for n in names:
        with Image.open(folder / f"{n}.png") as im:
            assert im.mode == "P" and im.size == size_wh
            pal = np.asarray(im.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
            np.testing.assert_array_equal(pal, davis_palette()[: len(pal)])


# ----------------------------------------------------------------------------- J&F


def occluded_video(seed: int):
    v = make_synthetic_video(12, 96, 128, seed=seed)
    # the scene the claim is about: several objects, one entering later, one occluded
    assert len(v.object_ids) >= 3
    assert max(v.first_appearance.values()) > 0
    area = (v.labels == 1).reshape(len(v.labels), -1).sum(1)
    assert area.min() < 0.7 * area.max()  # object 1 is partly hidden behind object 2
    return v


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_matching_only_with_oracle_proposals_reaches_jf_0_9(seed):
    v = occluded_video(seed)
    torch.manual_seed(0)
    cfg = DMMConfig(backbone="resnet18", input_size=(96, 128), hidden_size=16, refine=False)
    seg = VideoSegmenter(DMMNet(cfg), OracleProposals(v.labels, seed=seed, jitter=1))
    pred = np.stack(list(seg.segment(v.frames, v.first_mask, annotations=v.annotations)))
    assert pred.shape == v.labels.shape
    assert seg.object_ids == v.object_ids
    # the video has a late object: score it too (DAVIS scores only the first frame's objects)
    scores = evaluate_sequences({"synthetic": v.labels}, {"synthetic": pred}, include_late=True)
    assert {o.object_id for o in scores.objects} == set(v.object_ids)
    assert scores.global_stats()["J&F-Mean"] >= 0.9, scores.format_table()


def test_cli_matching_only_on_a_written_video_reaches_jf_0_9(tmp_path, capsys):
    """The same claim through files: DAVIS layout on disk, oracle proposals saved with
    ``save_precomputed``, ``dmm-deploy segment`` then ``dmm-deploy eval``."""
    v = occluded_video(0)
    root = v.write(tmp_path / "video")
    oracle = OracleProposals(v.labels, seed=0, jitter=1)
    npz = tmp_path / "oracle.npz"
    save_precomputed(npz, [oracle.detect(i, f) for i, f in enumerate(v.frames)], (96, 128))
    out = tmp_path / "pred"
    code, stdout, err = run_cli(
        capsys,
        "--frames", root / "frames",
        "--annotations", root / "annotations",
        "--out", out,
        "--proposals", f"precomputed:{npz}",
        "--matching-only", "--random-weights",
        "--backbone", "resnet18", "--input-size", "96x128", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "random weights for DMM-Net" in err and "Mask R-CNN" not in err
    assert "segmented 12 frames (128x96)" in stdout and "objects [1, 2, 3]" in stdout
    check_palette_pngs(out, [f"{t:05d}" for t in range(12)], (128, 96))
    scores = evaluate_dirs(root / "labels", out)
    assert scores.global_stats()["J&F-Mean"] >= 0.9, scores.format_table()
    assert main(["eval", "--gt", str(root / "labels"), "--pred", str(out)]) == 0
    assert "J&F" in capsys.readouterr().out


# ----------------------------------------------------------------------------- sample video


def test_bike_with_maskrcnn_random_weights_end_to_end(samples, tmp_path, capsys):
    """The default proposal source (torchvision Mask R-CNN), random weights, small input."""
    out = tmp_path / "bike"
    strip = tmp_path / "strip.png"
    code, stdout, err = run_cli(
        capsys,
        "--frames", samples / "images" / "bike",
        "--mask", samples / "masks" / "bike" / "00000.png",
        "--out", out,
        "--random-weights", "--detector-size", "160", "--max-frames", "3",
        "--overlay", strip,
        *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert "warning: random weights for DMM-Net and Mask R-CNN" in err
    assert "meaningless" in err
    assert "segmented 3 frames (854x480)" in stdout
    check_palette_pngs(out, ["00000", "00001", "00002"], (854, 480))
    first = read_mask(out / "00000.png")
    np.testing.assert_array_equal(first, read_mask(samples / "masks" / "bike" / "00000.png"))
    for name in ("00001", "00002"):
        assert set(np.unique(read_mask(out / f"{name}.png"))) <= {0, 1, 2}
    assert strip.read_bytes()[:8] == PNG_MAGIC
    with Image.open(strip) as im:
        assert im.mode == "RGB" and im.height == 160 and im.width > 2 * 160


def test_bike_every_frame_with_precomputed_proposals(samples, tmp_path, capsys):
    npz = tmp_path / "bike.npz"
    save_precomputed(npz, random_detections(4, (480, 854)), (480, 854))
    out = tmp_path / "bike"
    code, stdout, err = run_cli(
        capsys,
        "--frames", samples / "images" / "bike",
        "--mask", samples / "masks" / "bike" / "00000.png",
        "--out", out,
        "--proposals", f"precomputed:{npz}",
        "--random-weights",
        *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert "Mask R-CNN" not in err  # no detector involved
    check_palette_pngs(out, ["00000", "00001", "00002", "00003"], (854, 480))
    assert "segmented 4 frames (854x480)" in stdout


def test_checkpoint_weights_are_used(samples, tmp_path, capsys):
    """An original-format checkpoint (``trainer.pt``, original names) is loaded: the CLI's
    masks equal the segmenter's with the same weights, and no warning is printed."""
    cfg = DMMConfig(backbone="resnet18", input_size=(64, 112))
    torch.manual_seed(123)
    net = DMMNet(cfg).eval()
    state = net.state_dict()
    table = original_key_map(list(state))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({orig: state[ours] for orig, ours in table.items()}, ckpt / "trainer.pt")
    npz = tmp_path / "bike.npz"
    save_precomputed(npz, random_detections(3, (480, 854), seed=1), (480, 854))
    out = tmp_path / "bike"
    frames = samples / "images" / "bike"
    mask = samples / "masks" / "bike" / "00000.png"
    code, _, err = run_cli(
        capsys,
        "--frames", frames, "--mask", mask, "--out", out,
        "--proposals", f"precomputed:{npz}", "--checkpoint", ckpt, "--max-frames", "3",
        "--compat", "default",  # as the reference below (a checkpoint alone means "original")
        *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert "warning" not in err
    code, _, err = run_cli(
        capsys,
        "--frames", frames, "--mask", mask, "--out", tmp_path / "wrong",
        "--proposals", f"precomputed:{npz}", "--checkpoint", ckpt, "--backbone", "resnet50",
    )  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and "shape mismatches" in line and "--backbone resnet50" in line
    seg = VideoSegmenter(net, PrecomputedProposals(npz))
    paths = sorted(frames.glob("*.jpg"))[:3]
    for path, want in zip(paths, seg.segment(paths, mask), strict=True):
        np.testing.assert_array_equal(read_mask(out / f"{path.stem}.png"), want)


def test_later_annotations_add_objects(samples, tmp_path, capsys):
    """judo's first-appearance masks (00005.png fixed to the frame size) add objects 2 and 3."""
    ann = tmp_path / "ann"
    ann.mkdir()
    for f in sorted((samples / "masks" / "judo").glob("*.png")):
        labels = read_mask(f)
        if labels.shape != (480, 854):
            labels = np.pad(labels, ((0, 480 - labels.shape[0]), (0, 854 - labels.shape[1])))
        write_mask(ann / f.name, labels)
    npz = tmp_path / "judo.npz"
    save_precomputed(npz, random_detections(16, (480, 854), seed=2), (480, 854))
    out = tmp_path / "judo"
    code, stdout, err = run_cli(
        capsys,
        "--frames", samples / "images" / "judo",
        "--annotations", ann,  # its 00000.png is the first frame's annotation
        "--out", out,
        "--proposals", f"precomputed:{npz}", "--random-weights", "--max-frames", "9",
        "--overlay", tmp_path / "judo.png",
        *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert "objects [1, 2, 3]" in stdout
    assert "00013.png" in err  # annotation beyond --max-frames: reported as unused
    names, labels = read_label_dir(out)
    assert names == [f"{t:05d}" for t in range(9)]
    np.testing.assert_array_equal(labels[5][read_mask(ann / "00005.png") == 2], 2)
    np.testing.assert_array_equal(labels[8][read_mask(ann / "00008.png") == 3], 3)
    assert (tmp_path / "judo.png").is_file()


def test_video_file_input_and_mp4_overlay(samples, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    mask = np.zeros((480, 640), np.uint8)  # example.mp4 is 640 x 480
    mask[120:360, 200:440] = 5
    write_mask(tmp_path / "first.png", mask)
    out = tmp_path / "out"
    npz = tmp_path / "p.npz"  # the video input is under test here, not the detector
    save_precomputed(npz, random_detections(2, (480, 640)), (480, 640))
    code, stdout, err = run_cli(
        capsys,
        "--video", samples / "example.mp4", "--mask", tmp_path / "first.png", "--out", out,
        "--random-weights", "--proposals", f"precomputed:{npz}", "--max-frames", "2",
        "--overlay", tmp_path / "overlay.mp4",
        *TINY,
    )  # fmt: skip
    assert code == 0, err
    check_palette_pngs(out, ["00000", "00001"], (640, 480))
    assert set(np.unique(read_mask(out / "00001.png"))) <= {0, 5}
    assert (tmp_path / "overlay.mp4").stat().st_size > 1000
    assert "overlay: " in stdout


# ----------------------------------------------------------------------------- errors


def one_line_error(err: str) -> str:
    """The one error line of stderr (warning lines aside); no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip() and "segment: warning:" not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("dmm-deploy segment: error: "), err
    return lines[0]


def test_wrong_size_mask_names_the_file(samples, tmp_path, capsys):
    judo = samples / "masks" / "judo"
    code, _, err = run_cli(
        capsys,
        "--frames", samples / "images" / "judo", "--mask", judo / "00005.png",
        "--out", tmp_path / "o", "--random-weights", *TINY,
    )  # fmt: skip
    assert code == 2
    line = one_line_error(err)
    assert str(judo / "00005.png") in line and "853x480" in line and "854x480" in line
    # the same file inside --annotations is found before anything runs
    code, _, err = run_cli(
        capsys,
        "--frames", samples / "images" / "judo", "--annotations", judo,
        "--out", tmp_path / "o", "--random-weights", *TINY,
    )  # fmt: skip
    assert code == 2 and str(judo / "00005.png") in one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_corrupt_frame_names_the_file_after_writing_the_frames_before(samples, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("00000.jpg", "00001.jpg"):
        shutil.copy(samples / "images" / "bike" / name, frames / name)
    (frames / "00002.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a jpeg")
    npz = tmp_path / "p.npz"
    save_precomputed(npz, random_detections(3, (480, 854)), (480, 854))
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "--frames", frames, "--mask", samples / "masks" / "bike" / "00000.png", "--out", out,
        "--proposals", f"precomputed:{npz}", "--random-weights",
        "--overlay", tmp_path / "strip.png", *TINY,
    )  # fmt: skip
    assert code == 2
    line = one_line_error(err)
    assert "cannot read frame" in line and str(frames / "00002.jpg") in line
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]  # lazy
    assert not (tmp_path / "strip.png").exists()  # no strip from an interrupted run


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--proposals", "rcnn"], r"--proposals must be 'maskrcnn' or 'precomputed:FILE\.npz'"),
        (["--input-size", "255by448"], r"--input-size must be HEIGHTxWIDTH"),
        (["--input-size", "16x448"], r"--input-size must be at least 32x32"),
        (["--backbone", "vgg16"], r"--backbone must be one of .*resnet101"),
        (["--max-frames", "0"], r"--max-frames must be >= 1"),
        (["--overlay", "x.gif"], r"--overlay must end with \.png .* or \.mp4"),
        (["--device", "tpu"], r"--device must be 'cpu' or 'cuda'"),
        (["--threads", "0"], r"--threads must be in 1\.\.256"),
        (["--detector-size", "8"], r"--detector-size must be in 32\.\.2048"),
        (["--maskrcnn-version", "v3"], r"--maskrcnn-version must be 'v1' or 'v2'"),
    ],
)
def test_bad_options_are_one_line(args, pattern, samples, tmp_path, capsys):
    base = [
        "--frames",
        samples / "images" / "bike",
        "--mask",
        samples / "masks" / "bike" / "00000.png",
    ]
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "o", "--random-weights", *args)
    assert code == 2
    assert re.search(pattern, one_line_error(err)), err


def test_missing_inputs_and_weights(samples, tmp_path, capsys):
    bike = samples / "images" / "bike"
    mask = samples / "masks" / "bike" / "00000.png"
    o = ["--out", tmp_path / "o"]
    code, _, err = run_cli(capsys, "--frames", bike, "--mask", mask, *o)
    line = one_line_error(err)
    assert code == 2 and "no weights for DMM-Net and Mask R-CNN" in line
    assert "--checkpoint" in line and "--maskrcnn-weights" in line and "--random-weights" in line
    code, _, err = run_cli(
        capsys, "--frames", tmp_path / "absent", "--mask", mask, *o, "--random-weights"
    )
    assert code == 2 and str(tmp_path / "absent") in one_line_error(err)
    code, _, err = run_cli(
        capsys, "--frames", bike, "--mask", tmp_path / "m.png", *o, "--random-weights"
    )
    assert code == 2 and str(tmp_path / "m.png") in one_line_error(err)
    code, _, err = run_cli(capsys, "--frames", bike, *o, "--random-weights")
    assert code == 2 and "--mask" in one_line_error(err)
    code, _, err = run_cli(capsys, "--video", bike, "--mask", mask, *o, "--random-weights")
    assert code == 2 and "--video must be a video file" in one_line_error(err)
    code, _, err = run_cli(capsys, "--frames", mask, "--mask", mask, *o, "--random-weights")
    assert code == 2 and "--frames must be a folder" in one_line_error(err)
    code, _, err = run_cli(
        capsys, "--frames", bike, "--mask", mask, *o, "--checkpoint", tmp_path / "nockpt",
        "--proposals", f"precomputed:{tmp_path / 'none.npz'}",
    )  # fmt: skip
    assert code == 2 and str(tmp_path / "nockpt") in one_line_error(err)
    with pytest.raises(SystemExit) as exc:  # argparse: --frames and --video exclude each other
        main(["segment", "--frames", str(bike), "--video", "v.mp4", "--out", "o"])
    assert exc.value.code == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_device_is_one_line(samples, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "--frames", samples / "images" / "bike", "--mask", samples / "masks" / "bike" / "00000.png",
        "--out", tmp_path / "o", "--random-weights", "--device", "cuda",
    )  # fmt: skip
    assert code == 2 and "no CUDA device" in one_line_error(err)


def test_option_parsers():
    assert parse_size("255x448") == (255, 448)
    assert parse_size(" 64 X 112 ") == (64, 112)
    assert parse_proposals("maskrcnn") == ("maskrcnn", None)
    assert parse_proposals("precomputed:a/b.npz") == ("precomputed", Path("a/b.npz"))
    with pytest.raises(ValueError, match="precomputed:FILE"):
        parse_proposals("precomputed:")
