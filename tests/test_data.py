"""Video data layer: palette PNGs, lazy frame sources, overlays, synthetic videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmm_deploy.data import (
    DataFileError,
    ImageFolderSource,
    OverlayWriter,
    VideoFileSource,
    davis_palette,
    make_synthetic_video,
    open_frames,
    overlay_labels,
    read_frame,
    read_label_dir,
    read_mask,
    write_frames,
    write_label_dir,
    write_mask,
)
from dmm_deploy.data.overlay import label_contours

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vos_samples"


def samples(*parts: str) -> Path:
    path = SAMPLES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"sample data not found: {path}")
    return path


def needs_ffmpeg():
    return pytest.importorskip("imageio_ffmpeg", reason="video files need imageio-ffmpeg")


# -- palette and masks --------------------------------------------------------------------------


def test_davis_palette_is_the_voc_colour_map():
    pal = davis_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(
        pal[:9],
        [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128],
         [128, 0, 128], [0, 128, 128], [128, 128, 128], [64, 0, 0]],
    )  # fmt: skip
    assert len({tuple(c) for c in pal}) == 256  # every id its own colour
    judo = samples("masks", "judo", "00000.png")
    with Image.open(judo) as im:
        np.testing.assert_array_equal(np.array(im.getpalette()).reshape(-1, 3), pal)


def test_mask_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 256, size=(7, 11)).astype(np.uint8)
    path = write_mask(tmp_path / "sub" / "m.png", labels)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im.getpalette()).reshape(-1, 3), davis_palette())
    out = read_mask(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    # bool and wider integer inputs are accepted when their values fit
    write_mask(tmp_path / "b.png", labels > 100)
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), labels > 100)
    write_mask(tmp_path / "i.png", labels.astype(np.int64))
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png"), labels)


def test_read_mask_greyscale_and_sample(tmp_path):
    grey = np.zeros((5, 6), dtype=np.uint8)
    grey[1:3, 2:4] = 3
    Image.fromarray(grey).save(tmp_path / "g.png")  # mode "L"
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), grey)
    bike = read_mask(samples("masks", "bike", "00000.png"), expected_size=(480, 854))
    assert bike.shape == (480, 854) and bike.dtype == np.uint8
    assert set(np.unique(bike)) == {0, 1, 2}


def test_read_mask_errors_name_the_file(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(DataFileError, match=r"rgb\.png is a 'RGB' image; expected a palette"):
        read_mask(rgb)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataFileError, match=r"cannot read mask .*bad\.png") as info:
        read_mask(bad)
    assert info.value.path == bad
    ok = write_mask(tmp_path / "ok.png", np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(DataFileError, match=r"ok\.png is 6x4 \(width x height\) but the frames"):
        read_mask(ok, expected_size=(4, 5))
    with pytest.raises(FileNotFoundError, match="mask not found"):
        read_mask(tmp_path / "missing.png")


def test_sample_mask_of_the_wrong_size_is_reported():
    # judo/00005.png of the sample set is 853 pixels wide while the frames are 854.
    path = samples("masks", "judo", "00005.png")
    with pytest.raises(DataFileError, match=r"00005\.png is 853x480 .* frames are 854x480"):
        read_mask(path, expected_size=(480, 854))


def test_write_mask_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"2-D \(H, W\)"):
        write_mask(tmp_path / "x.png", np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="integer"):
        write_mask(tmp_path / "x.png", np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        write_mask(tmp_path / "x.png", np.full((2, 3), 300))


def test_label_dir_round_trip(tmp_path):
    labels = np.random.default_rng(1).integers(0, 4, size=(3, 5, 7)).astype(np.uint8)
    write_label_dir(tmp_path / "seq", labels, names=["a1", "a2", "a10"])
    names, out = read_label_dir(tmp_path / "seq")
    assert names == ["a1", "a2", "a10"]  # natural order
    np.testing.assert_array_equal(out, labels)
    write_mask(tmp_path / "seq" / "a3.png", np.zeros((5, 6), dtype=np.uint8))
    with pytest.raises(DataFileError, match=r"a3\.png is 6x5"):
        read_label_dir(tmp_path / "seq")


# -- frames -------------------------------------------------------------------------------------


def test_image_folder_source_sample_is_lazy_rgb():
    src = open_frames(samples("images", "bike"))
    assert isinstance(src, ImageFolderSource)
    assert len(src) == 4 and src.size == (480, 854)
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.name for f in frames] == ["00000", "00001", "00002", "00003"]
    assert all(f.image.shape == (480, 854, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].image.std() > 10  # real content


def test_image_folder_order_modes_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 6, 8, 3)).astype(np.uint8)
    d = tmp_path / "frames"
    write_frames(d, imgs, names=["f2", "f10", "f1"])
    Image.fromarray(imgs[0][..., 0]).save(d / "f11.png")  # greyscale -> RGB
    Image.fromarray(np.dstack([imgs[1], np.full((6, 8), 7, np.uint8)])).save(d / "f12.png")
    (d / "notes.txt").write_text("not a frame")
    src = ImageFolderSource(d)
    assert [p.name for p in src.files] == ["f1.png", "f2.png", "f10.png", "f11.png", "f12.png"]
    frames = list(src)
    np.testing.assert_array_equal(frames[0].image, imgs[2])
    np.testing.assert_array_equal(frames[3].image, np.repeat(imgs[0][..., :1], 3, axis=2))
    np.testing.assert_array_equal(frames[4].image, imgs[1])  # alpha dropped
    # a corrupt frame fails when it is reached, naming the file; earlier frames were yielded
    (d / "f3.png").write_bytes(b"broken")
    seen = []
    with pytest.raises(DataFileError, match=r"cannot read frame .*f3\.png"):
        for f in ImageFolderSource(d):
            seen.append(f.name)
    assert seen == ["f1", "f2"]
    (d / "f3.png").unlink()
    Image.fromarray(imgs[0][:5]).save(d / "f20.png")
    with pytest.raises(DataFileError, match=r"f20\.png is 8x5 .* first frame is 8x6"):
        list(ImageFolderSource(d))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no images"):
        ImageFolderSource(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        open_frames(tmp_path / "nothing")
    with pytest.raises(ValueError, match="folder of images or a video"):
        open_frames(d / "notes.txt")
    with pytest.raises(FileNotFoundError, match="frame not found"):
        read_frame(d / "nope.jpg")


def test_jpeg_frames(tmp_path):
    img = np.full((2, 16, 16, 3), 120, dtype=np.uint8)
    write_frames(tmp_path, img, ext=".jpg")
    frames = ImageFolderSource(tmp_path).read_all()
    assert frames.shape == (2, 16, 16, 3)
    assert np.abs(frames.astype(int) - 120).max() <= 2


def test_video_source_sample():
    needs_ffmpeg()
    src = open_frames(samples("example.mp4"))
    assert isinstance(src, VideoFileSource)
    assert src.size == (480, 640)
    assert len(src) == 117 and src.fps == 25.0
    it = iter(src)
    first = next(it)
    second = next(it)
    it.close()  # stopping early ends the decoder
    assert (first.index, first.name, second.name) == (0, "00000", "00001")
    assert first.image.shape == (480, 640, 3) and first.image.dtype == np.uint8
    assert not np.array_equal(first.image, second.image)


def test_video_round_trip_and_corrupt_file(tmp_path):
    ffmpeg = needs_ffmpeg()
    video = make_synthetic_video(num_frames=6, height=64, width=96, noise=0.0, seed=2)
    path = tmp_path / "clip.mp4"
    writer = ffmpeg.write_frames(str(path), (96, 64), fps=10, macro_block_size=1, quality=9)
    writer.send(None)
    for f in video.frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    frames = VideoFileSource(path).read_all()
    assert frames.shape == video.frames.shape
    assert np.abs(frames.astype(int) - video.frames.astype(int)).mean() < 8  # lossy codec
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(DataFileError, match=r"cannot read video .*bad\.mp4"):
        VideoFileSource(bad)


# -- overlays -----------------------------------------------------------------------------------


def test_overlay_blend_and_contours():
    image = np.full((6, 8, 3), 100, dtype=np.uint8)
    labels = np.zeros((6, 8), dtype=np.uint8)
    labels[1:5, 1:5] = 1
    out = overlay_labels(image, labels, alpha=0.5, contour_color=None)
    np.testing.assert_array_equal(out[labels == 0], 100)
    np.testing.assert_array_equal(out[2, 2], [114, 50, 50])  # (100 + 128) / 2, 100 / 2
    contours = label_contours(labels)
    assert contours[1, 1:5].all() and contours[4, 1:5].all() and not contours[2:4, 2:4].any()
    out = overlay_labels(image, labels)
    np.testing.assert_array_equal(out[contours], 255)
    np.testing.assert_array_equal(out[2, 2], [114, 50, 50])
    with pytest.raises(ValueError, match="labels must have the image's shape"):
        overlay_labels(image, labels[:5])
    with pytest.raises(ValueError, match="uint8"):
        overlay_labels(image.astype(float), labels)


def test_overlay_strip_keeps_first_last_and_bounds_tiles(tmp_path):
    video = make_synthetic_video(num_frames=21, height=48, width=64, seed=4)
    path = tmp_path / "strip.png"
    with OverlayWriter(path, max_tiles=4, tile_height=24) as ow:
        for f, lab in zip(video.frames, video.labels, strict=True):
            ow.add(f, lab)
    with Image.open(path) as im:
        strip = np.asarray(im)
    tile_w = 32  # 64 * 24 / 48
    assert strip.shape == (24, 4 * tile_w + 3 * 4, 3)
    # first and last tiles are the first and last frames
    for frame, lab, x in ((0, 0, 0), (20, 20, strip.shape[1] - tile_w)):
        full = Image.fromarray(overlay_labels(video.frames[frame], video.labels[lab]))
        tile = np.asarray(full.resize((tile_w, 24), Image.BILINEAR))
        np.testing.assert_array_equal(strip[:, x : x + tile_w], tile)
    with pytest.raises(ValueError, match=r"\.png \(strip\) or \.mp4"):
        OverlayWriter(tmp_path / "x.gif")


def test_overlay_video_odd_size(tmp_path):
    needs_ffmpeg()
    video = make_synthetic_video(num_frames=5, height=33, width=47, seed=5)
    path = tmp_path / "ov.mp4"
    with OverlayWriter(path, fps=5) as ow:
        for f, lab in zip(video.frames, video.labels, strict=True):
            ow.add(f, lab)
    src = VideoFileSource(path)
    assert src.size == (34, 48)  # padded to even for yuv420p
    assert src.read_all().shape == (5, 34, 48, 3)


# -- synthetic videos ---------------------------------------------------------------------------


def test_synthetic_video_contents():
    v = make_synthetic_video(num_frames=12, height=96, width=128, num_objects=3, seed=0)
    assert v.frames.shape == (12, 96, 128, 3) and v.frames.dtype == np.uint8
    assert v.labels.shape == (12, 96, 128) and v.labels.dtype == np.uint8
    assert v.object_ids == [1, 2, 3]
    assert v.first_appearance == {1: 0, 2: 0, 3: 4}  # enter_frame = 12 // 3
    for k, t0 in v.first_appearance.items():
        present = (v.labels == k).any(axis=(1, 2))
        assert not present[:t0].any() and present[t0:].all()
    # the first-appearance annotations hold exactly the new objects
    assert set(np.unique(v.first_mask)) == {0, 1, 2}
    assert set(v.annotations) == {0, 4}
    assert set(np.unique(v.annotations[4])) == {0, 3}
    np.testing.assert_array_equal(v.annotations[4] == 3, v.labels[4] == 3)
    assert not v.annotation(5).any()
    # textured objects over a noisy background
    inside = v.frames[0][v.labels[0] == 1].astype(float)
    assert inside.std(axis=0).max() > 10
    assert v.frames[0][v.labels[0] == 0].std() > 10


def test_synthetic_occlusion_depth_order():
    v = make_synthetic_video(num_frames=12, seed=0)
    order = v.depth_order
    assert order.index(2) > order.index(1)  # object 2 is in front of object 1
    area1 = (v.labels == 1).sum(axis=(1, 2))
    area2 = (v.labels == 2).sum(axis=(1, 2))
    # object 1 is partly hidden while 2 passes in front, then visible in full again
    assert area1.min() < 0.8 * area1.max()
    assert area1[0] == area1.max() and area1[-1] == area1.max()
    assert (area1 > 0.25 * area1.max()).all()  # never hidden completely
    assert area2[area1.argmin()] >= 0.95 * area2.max()  # the occluder itself stays whole


def test_synthetic_is_seeded_and_configurable(tmp_path):
    a = make_synthetic_video(
        num_frames=8, height=64, width=80, num_objects=5, late_objects=2, seed=7
    )
    b = make_synthetic_video(
        num_frames=8, height=64, width=80, num_objects=5, late_objects=2, seed=7
    )
    c = make_synthetic_video(
        num_frames=8, height=64, width=80, num_objects=5, late_objects=2, seed=8
    )
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.frames, c.frames)
    assert a.first_appearance == {1: 0, 2: 0, 3: 0, 4: 2, 5: 4}
    plain = make_synthetic_video(num_frames=4, num_objects=1, late_objects=0, occlusion=False)
    assert plain.object_ids == [1] and plain.annotations.keys() == {0}
    out = a.write(tmp_path / "clip")
    assert len(ImageFolderSource(out / "frames")) == 8
    names, labels = read_label_dir(out / "labels")
    assert names == [f"{t:05d}" for t in range(8)]
    np.testing.assert_array_equal(labels, a.labels)
    assert sorted(p.name for p in (out / "annotations").iterdir()) == [
        "00000.png", "00002.png", "00004.png"
    ]  # fmt: skip
    np.testing.assert_array_equal(ImageFolderSource(out / "frames").read_all(), a.frames)


def test_synthetic_argument_errors():
    with pytest.raises(ValueError, match="num_objects"):
        make_synthetic_video(num_objects=0)
    with pytest.raises(ValueError, match="late_objects"):
        make_synthetic_video(num_objects=2, late_objects=2)
    with pytest.raises(ValueError, match="occlusion=True needs at least two objects"):
        make_synthetic_video(num_objects=2, late_objects=1)
    with pytest.raises(ValueError, match="enter_frame"):
        make_synthetic_video(num_frames=4, enter_frame=4)
    with pytest.raises(TypeError, match="height"):
        make_synthetic_video(height=64.0)
    with pytest.raises(ValueError, match="could not place"):
        make_synthetic_video(height=32, width=32, num_objects=20, late_objects=0, min_visible=0.9)


# -- folders: hidden files, duplicate stems, atomic writes, guarded output folders -------------


def test_hidden_files_are_ignored_and_duplicate_stems_refused(tmp_path):
    from dmm_deploy.data import DataFileError
    from dmm_deploy.data.davis import list_images

    img = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "00000.jpg")
    (tmp_path / "._00000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["00000.jpg"]
    assert len(open_frames(tmp_path)) == 1
    Image.fromarray(img).save(tmp_path / "00000.png")
    with pytest.raises(
        DataFileError, match=r"two images named '00000' \(00000\.jpg and 00000\.png\)"
    ):
        open_frames(tmp_path)


def test_a_frame_that_links_to_nothing_is_refused(tmp_path):
    """A dangling link among the frames would silently drop a frame and shift the frame index
    of every later one (and the name of its mask)."""
    from dmm_deploy.data import DataFileError
    from dmm_deploy.data.davis import list_images

    img = np.zeros((8, 8, 3), np.uint8)
    for name in ("00000.jpg", "00002.jpg"):
        Image.fromarray(img).save(tmp_path / name)
    (tmp_path / "00001.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(DataFileError, match=r"00001\.jpg is a link to a file that does not exist"):
        list_images(tmp_path)
    (tmp_path / "00001.jpg").unlink()
    (tmp_path / "00001.jpg").symlink_to(tmp_path / "00000.jpg")  # a working link is a frame
    assert [p.name for p in list_images(tmp_path)] == ["00000.jpg", "00001.jpg", "00002.jpg"]


def test_atomic_output_leaves_the_old_file_on_error(tmp_path):
    from dmm_deploy.data.davis import atomic_output

    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.txt"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_overlay_discarded_leaves_nothing(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[4:9, 4:9] = 1
    image = np.zeros((16, 16, 3), np.uint8)
    for name in ("s.png", "v.mp4"):
        if name.endswith(".mp4"):
            needs_ffmpeg()
        ow = OverlayWriter(tmp_path / name)
        ow.add(image, labels)
        assert ow.close(write=False) is None
    assert os.listdir(tmp_path) == []


def test_streams_and_devices_are_live_sources(tmp_path):
    from dmm_deploy.data.frames import is_stream

    assert is_stream("rtsp://host:554/cam") and is_stream("http://x/y.mp4")
    assert not is_stream(tmp_path) and not is_stream(tmp_path / "clip.mp4")
    if Path("/dev/null").exists():
        assert is_stream("/dev/null")  # a character device, as /dev/video0


def test_result_folder_rules(tmp_path):
    from dmm_deploy.data.output import PARTIAL_MARKER, ResultFolder, read_partial

    out = tmp_path / "out"
    first = ResultFolder(out, {"a": 1})
    first.open(total=3)
    assert read_partial(out)["status"] == "running"
    with pytest.raises(ValueError, match="being written by another run"):
        ResultFolder(out, {"a": 1}, overwrite=True).open()
    first.write_mask("00000", np.ones((4, 4), np.uint8))
    first.mark_partial("interrupted after 1 of 3 frames")
    first.release()
    with pytest.raises(ValueError, match=r"is not empty \(unfinished run, 1 of 3 frames written"):
        ResultFolder(out, {"a": 1}).check()
    with pytest.raises(ValueError, match=r"other settings \(a: 1, now 2\)"):
        ResultFolder(out, {"a": 2}, resume=True).check()
    again = ResultFolder(out, {"a": 1}, resume=True)
    again.open(total=3)
    assert again.existing == {"00000"}
    again.finish()
    assert sorted(os.listdir(out)) == ["00000.png"] and not (out / PARTIAL_MARKER).exists()
    fresh = ResultFolder(tmp_path / "new", {})
    fresh.open()
    fresh.release(discard_if_empty=True)  # setup failed before any frame: no trace left
    assert not (tmp_path / "new").exists()


def test_precomputed_detections_refuse_frames_beyond_their_video(tmp_path):
    """A detections file records its video's length: asking for a later frame (the file of a
    shorter video) is one clear error, not a silent run without proposals."""
    from dmm_deploy.data.detections import PrecomputedFile, write_precomputed

    path = tmp_path / "d.npz"
    boxes = np.array([[1, 2, 10, 12]], np.float32)
    write_precomputed(
        path, np.array([1]), boxes, np.ones(1), np.ones((1, 28, 28)), "box", (20, 30), 4
    )
    det = PrecomputedFile(path)
    frame = np.zeros((20, 30, 3), np.uint8)
    assert len(det.frame_arrays(0, frame)[0]) == 0 and len(det.frame_arrays(1, frame)[0]) == 1
    assert len(det.frame_arrays(3, frame)[0]) == 0
    with pytest.raises(ValueError, match=r"frame 4 is beyond the 4 frames of .*d\.npz") as e:
        det.frame_arrays(4, frame)
    assert "\n" not in str(e.value)


def _detections_file(path: Path, **change) -> Path:
    """A valid detections file of a 4-frame video (3 detections), with ``change``d arrays."""
    from dmm_deploy.data.detections import write_precomputed

    write_precomputed(
        path,
        np.array([0, 1, 3]),
        np.array([[1, 2, 10, 12], [0, 0, 5, 5], [3, 3, 9, 9]], np.float32),
        np.array([0.9, 0.5, 0.7]),
        np.full((3, 28, 28), 0.5),
        "box",
        (20, 30),
        4,
    )
    if change:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        np.savez(path, **{**arrays, **change})
    return path


def _one_line_error(path: Path, match: str) -> str:
    from dmm_deploy.data.detections import PrecomputedFile

    with pytest.raises(ValueError, match=match) as e:
        PrecomputedFile(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


def test_precomputed_detections_damaged_files_are_one_clear_error(tmp_path):
    """Truncated, empty, corrupted (bad CRC), or not an .npz at all: one ValueError naming the
    file, never numpy's or zipfile's own exceptions (a traceback in ``segment``)."""
    import zipfile

    from dmm_deploy.data.detections import PrecomputedFile

    good = _detections_file(tmp_path / "good.npz")
    data = good.read_bytes()
    unreadable = r"is not a readable precomputed-detections \.npz"
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "cut.npz", f"{unreadable}: truncated or damaged zip archive")
    (tmp_path / "head.npz").write_bytes(data[:500])
    _one_line_error(tmp_path / "head.npz", f"{unreadable}: truncated or damaged zip archive")
    # an array header claiming a shape far beyond memory (numpy raises MemoryError), in an
    # archive whose checksums are right
    import io

    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        for key, value in np.load(good).items():
            buf = io.BytesIO()
            np.save(buf, value)
            raw = buf.getvalue()
            if key == "masks":
                at = raw.index(b"(3, 28, 28), }")
                end = at + len(b"(3, 28, 28), }")
                while raw[end : end + 1] == b" ":  # the header's padding: keep its length
                    end += 1
                raw = raw[:at] + b"(99999999999, 28), }".ljust(end - at) + raw[end:]
            z.writestr(f"{key}.npy", raw)
    _one_line_error(tmp_path / "huge.npz", f"{unreadable}: array 'masks' cannot be read")
    (tmp_path / "empty.npz").write_bytes(b"")
    _one_line_error(tmp_path / "empty.npz", f"{unreadable}: the file is empty")
    with zipfile.ZipFile(good) as z:  # one byte flipped inside masks.npy's compressed data
        info = z.getinfo("masks.npy")
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26 :][:2], "little")
    start += int.from_bytes(data[info.header_offset + 28 :][:2], "little")
    flipped = bytearray(data)
    flipped[start + info.compress_size // 2] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    _one_line_error(tmp_path / "flip.npz", f"{unreadable}: array 'masks' cannot be read")
    (tmp_path / "text.npz").write_text("frame,boxes\n0,1 2 3 4\n")
    message = _one_line_error(tmp_path / "text.npz", f"{unreadable}: it is not an .npz archive")
    assert "pickle" not in message
    np.save(tmp_path / "one.npy", np.zeros(3))
    _one_line_error(tmp_path / "one.npy", f"{unreadable}: it is one .npy array")
    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as z:  # a zip, but not of .npy arrays
        z.writestr("frame", "0 1 2")
    _one_line_error(tmp_path / "raw.npz", r"'frame' in the archive is not a \.npy array")
    assert PrecomputedFile(good).num_frames == 4  # the original still reads


def test_precomputed_detections_refuse_bad_contents_at_load(tmp_path):
    """A wrong mask_kind, frame indices outside the video, NaN or infinite boxes, scores or
    masks are refused when the file is read, naming what is wrong, not later (silently no
    detections, or a RuntimeWarning)."""
    from dmm_deploy.data.detections import PrecomputedFile

    message = _one_line_error(
        _detections_file(tmp_path / "kind.npz", mask_kind=np.array("foo")),
        r"mask_kind must be 'box' or 'frame', got 'foo'",
    )
    assert "inconsistent" not in message
    _one_line_error(
        _detections_file(tmp_path / "late.npz", frame=np.array([0, 7, 3])),
        r"frame index 7 \(detection 1\) is outside \[0, 4\)",
    )
    _one_line_error(
        _detections_file(tmp_path / "negative.npz", frame=np.array([0, -1, 3])),
        r"frame index -1 \(detection 1\) is outside \[0, 4\)",
    )
    path = _detections_file(tmp_path / "no_length.npz")  # other writers: no num_frames
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "num_frames"}
    np.savez(path, **arrays)
    assert PrecomputedFile(path).num_frames == 4
    np.savez(path, **{**arrays, "frame": np.array([0, -2, 3])})
    _one_line_error(path, r"frame index -2 \(detection 1\) is outside \[0, 4\)")
    np.savez(path, **{**arrays, "frame": np.array([0.0, 1.5, 3.0])})
    _one_line_error(path, r"frame must hold whole frame indices")
    boxes = np.array([[1, 2, 10, 12], [0, 0, 5, 5], [3, np.nan, 9, 9]], np.float32)
    _one_line_error(
        _detections_file(tmp_path / "nan_box.npz", boxes=boxes),
        r"the box of detection 2 \(frame 3\) is NaN or infinite: 3, nan, 9, 9",
    )
    _one_line_error(
        _detections_file(tmp_path / "inf_score.npz", scores=np.array([0.9, np.inf, 0.7])),
        r"the score of detection 1 \(frame 1\) is NaN or infinite: inf",
    )
    _one_line_error(  # float64 beyond float32: infinite once read
        _detections_file(tmp_path / "huge_score.npz", scores=np.array([0.9, 1e300, 0.7])),
        r"the score of detection 1 \(frame 1\) is NaN or infinite",
    )
    masks = np.full((3, 28, 28), 0.5, np.float32)
    masks[0, 3, 4] = -np.inf
    _one_line_error(
        _detections_file(tmp_path / "inf_mask.npz", masks=masks),
        r"the mask of detection 0 \(frame 0\) has NaN or infinite values",
    )
    _one_line_error(
        _detections_file(tmp_path / "length.npz", num_frames=np.array(-1)),
        r"num_frames must be a whole number >= 0, got -1",
    )
    _one_line_error(
        _detections_file(tmp_path / "size.npz", image_size=np.array([20.5, 30])),
        r"image_size must be H, W > 0, got \[20\.5, 30\.0\]",
    )
    _one_line_error(
        _detections_file(tmp_path / "text_masks.npz", masks=np.full((3, 28, 28), "x")),
        r"masks must be numbers, got <U1 values",
    )


def test_precomputed_detections_valid_files_read_as_before(tmp_path):
    """The checks refuse nothing valid: float masks (probabilities), float16 frame maps, frame
    indices stored as whole floats, no detections at all."""
    from dmm_deploy.data.detections import PrecomputedFile, write_precomputed

    frame = np.zeros((20, 30, 3), np.uint8)
    path = _detections_file(
        tmp_path / "float.npz",
        masks=np.full((3, 28, 28), 0.25, np.float16),
        frame=np.array([0.0, 1, 3]),
    )
    det = PrecomputedFile(path)
    boxes, scores, masks = det.frame_arrays(3, frame)
    assert boxes.tolist() == [[3, 3, 9, 9]] and scores.tolist() == [pytest.approx(0.7)]
    assert masks.dtype == np.float32 and np.all(masks == 0.25)
    empty = tmp_path / "empty.npz"
    write_precomputed(empty, [], [], [], np.zeros((0, 20, 30)), "frame", (20, 30), 2)
    det = PrecomputedFile(empty)
    assert det.kind == "frame" and det.num_frames == 2
    assert [len(a) for a in det.frame_arrays(1, frame)] == [0, 0, 0]
