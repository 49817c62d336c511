"""J&F evaluation: hand-computed J, F, boundaries, statistics, frame exclusion, folders, CLI."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest

from dmm_deploy.cli import main
from dmm_deploy.data import DataFileError, write_label_dir, write_mask
from dmm_deploy.eval import (
    METRICS,
    boundary_measure,
    db_statistics,
    dilate_disk,
    disk,
    disk_radius,
    evaluate_dirs,
    evaluate_sequence,
    evaluate_sequences,
    region_similarity,
    seg2bmap,
)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vos_samples"


def square(shape, y0, y1, x0, x1, value=1):
    """Label map with ``value`` on rows y0..y1 and columns x0..x1 (inclusive)."""
    m = np.zeros(shape, dtype=np.uint8)
    m[y0 : y1 + 1, x0 : x1 + 1] = value
    return m


# -- per-frame measures, by hand ----------------------------------------------------------------


def test_region_similarity_by_hand():
    gt = square((6, 6), 1, 3, 1, 3)  # 9 pixels
    pred = square((6, 6), 2, 4, 2, 4)  # 9 pixels, 4 shared
    assert region_similarity(gt, pred) == pytest.approx(4 / 14)
    assert region_similarity(gt, gt) == 1.0
    assert region_similarity(gt, np.zeros_like(gt)) == 0.0
    assert region_similarity(np.zeros_like(gt), np.zeros_like(gt)) == 1.0  # both empty
    stacked = region_similarity(np.stack([gt, gt]), np.stack([pred, gt]))
    np.testing.assert_allclose(stacked, [4 / 14, 1.0])


def test_seg2bmap_square_is_outline_of_box_grown_up_left():
    seg = square((8, 8), 2, 4, 2, 4)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0, 0, 0],
            [0, 1, 0, 0, 1, 0, 0, 0],
            [0, 1, 0, 0, 1, 0, 0, 0],
            [0, 1, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_seg2bmap_image_border_conventions():
    # Foreground on the last column: its pixels are compared only with the pixel below
    # (the same object), so the boundary is the column left of it.
    seg = np.zeros((4, 4), dtype=np.uint8)
    seg[:, 3] = 1
    expected = np.zeros((4, 4), dtype=bool)
    expected[:, 2] = True
    np.testing.assert_array_equal(seg2bmap(seg), expected)
    # A full frame has no boundary; a single pixel in the bottom-right corner has none either.
    assert not seg2bmap(np.ones((5, 6))).any()
    corner = np.zeros((5, 6))
    corner[-1, -1] = 1
    np.testing.assert_array_equal(
        np.argwhere(seg2bmap(corner)), [[3, 4], [3, 5], [4, 4]]
    )  # up-left neighbours only
    # Foreground on the last row, away from the corner: compared with the right neighbour.
    row = np.zeros((3, 5))
    row[2, 1:3] = 1
    np.testing.assert_array_equal(
        np.argwhere(seg2bmap(row)), [[1, 0], [1, 1], [1, 2], [2, 0], [2, 2]]
    )


def test_disk_and_dilation():
    np.testing.assert_array_equal(
        disk(2).astype(int),
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
    )
    one = np.zeros((9, 9), dtype=bool)
    one[4, 4] = True
    for r in range(4):
        grown = dilate_disk(one, r)
        np.testing.assert_array_equal(grown[4 - r : 5 + r, 4 - r : 5 + r], disk(r))
        assert grown.sum() == disk(r).sum()  # nothing outside the disk
    # near the border the disk is cut, not wrapped
    edge = np.zeros((5, 5), dtype=bool)
    edge[0, 0] = True
    np.testing.assert_array_equal(np.argwhere(dilate_disk(edge, 1)), [[0, 0], [0, 1], [1, 0]])


def test_dilation_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    masks = rng.random((3, 37, 53)) < 0.03
    for r in (1, 2, 5, 8, 12):
        expected = np.stack([ndimage.binary_dilation(m, structure=disk(r)) for m in masks])
        np.testing.assert_array_equal(dilate_disk(masks, r), expected)


def test_disk_radius():
    assert disk_radius((480, 854)) == math.ceil(0.008 * math.hypot(480, 854)) == 8
    assert disk_radius((8, 8)) == 1
    assert disk_radius((100, 100), bound_th=3) == 3  # >= 1: pixels
    with pytest.raises(ValueError, match="bound_th"):
        disk_radius((8, 8), bound_th=0)


def test_boundary_f_by_hand_within_tolerance():
    # 8x8 image: radius ceil(0.008 * 11.3) = 1 (the pixel and its 4 neighbours).
    gt = square((8, 8), 2, 4, 2, 4)
    # Shift by one column: every boundary pixel has a partner within 1 pixel.
    f, p, r = boundary_measure(gt, square((8, 8), 2, 4, 3, 5))
    assert (f, p, r) == (1.0, 1.0, 1.0)
    assert region_similarity(gt, square((8, 8), 2, 4, 3, 5)) == pytest.approx(6 / 12)


def test_boundary_f_by_hand_outside_tolerance():
    # 8x10 image (radius still 1), so that the prediction stays off the right border.
    # Shift by three columns: gt outline is rows 1..4 x cols 1..4 (12 px), pred outline rows
    # 1..4 x cols 4..7 (12 px). Matched gt pixels: (1,3) (1,4) (4,3) (4,4) (2,4) (3,4) -> 6/12;
    # by symmetry 6/12 of the prediction's.
    gt = square((8, 10), 2, 4, 2, 4)
    pred = square((8, 10), 2, 4, 5, 7)
    assert disk_radius(gt.shape) == 1
    f, p, r = boundary_measure(gt, pred)
    assert p == pytest.approx(0.5)
    assert r == pytest.approx(0.5)
    assert f == pytest.approx(0.5)
    # A tolerance of 3 pixels matches everything again.
    assert boundary_measure(gt, pred, bound_th=3)[0] == 1.0


def test_boundary_f_by_hand_unequal_precision_recall():
    # gt: outline of rows 1..4 x cols 1..4 (12 px); pred: a single pixel (2,2), boundary
    # (1,1) (1,2) (2,1) (2,2); each has a gt boundary pixel within 1 -> P = 1.
    # gt pixels within 1 of them: (1,1) (1,2) (1,3) (2,1) (3,1) -> R = 5/12.
    gt = square((8, 8), 2, 4, 2, 4)
    pred = square((8, 8), 2, 2, 2, 2)
    f, p, r = boundary_measure(gt, pred)
    assert p == 1.0
    assert r == pytest.approx(5 / 12)
    assert f == pytest.approx(2 * (5 / 12) / (1 + 5 / 12))


def test_boundary_f_empty_cases():
    gt = square((8, 8), 2, 4, 2, 4)
    empty = np.zeros_like(gt)
    assert boundary_measure(empty, empty) == (1.0, 1.0, 1.0)
    assert boundary_measure(gt, empty) == (0.0, 1.0, 0.0)  # nothing predicted: P=1, R=0
    assert boundary_measure(empty, gt) == (0.0, 0.0, 1.0)  # nothing to find: P=0, R=1


def test_boundary_f_agrees_with_direct_scipy_at_davis_size():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    h, w = 480, 854
    yy, xx = np.mgrid[0:h, 0:w]
    gt = (yy - 300) ** 2 / 120**2 + (xx - 700) ** 2 / 200**2 <= 1  # touches the right border
    pred = np.roll(gt, (6, -9), axis=(0, 1)) ^ (rng.random((h, w)) < 0.002)
    r = disk_radius((h, w))
    gb, pb = seg2bmap(gt), seg2bmap(pred)
    p = (pb & ndimage.binary_dilation(gb, disk(r))).sum() / pb.sum()
    rc = (gb & ndimage.binary_dilation(pb, disk(r))).sum() / gb.sum()
    f, p2, r2 = boundary_measure(gt, pred)
    assert (p2, r2) == pytest.approx((p, rc), abs=1e-12)
    assert f == pytest.approx(2 * p * rc / (p + rc), abs=1e-12)


def test_db_statistics_by_hand():
    m, rec, dec = db_statistics(np.array([1.0, 0.8, 0.4, 0.2, 0.6]))
    assert m == pytest.approx(0.6)
    assert rec == pytest.approx(0.6)  # 1, 0.8, 0.6 are above 0.5
    assert dec == pytest.approx(0.9 - 0.4)  # bins [0:2] and [3:5]
    # T = 8: bin edges round(linspace(1, 8, 5)) - 1 = 0, 2, 4, 5, 7 (4.5 rounds up)
    x = np.arange(8) / 10
    assert db_statistics(x)[2] == pytest.approx(np.mean(x[0:3]) - np.mean(x[5:8]))
    assert db_statistics(np.array([0.7]))[2] == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        db_statistics(np.array([]))


# -- sequences ----------------------------------------------------------------------------------


def _sequence(t=5, shape=(8, 10)):
    gt = np.stack([square(shape, 2, 4, 2, 4) for _ in range(t)])
    return gt


def test_first_and_last_frames_are_excluded():
    gt = _sequence(5)
    pred = gt.copy()
    pred[0] = 0  # wrong only on the first and last frames
    pred[-1] = 0
    (obj,) = evaluate_sequence(gt, pred, "s")
    np.testing.assert_array_equal(obj.frames, [1, 2, 3])
    assert obj.stats()["J-Mean"] == 1.0
    assert obj.stats()["F-Mean"] == 1.0
    (obj,) = evaluate_sequence(gt, pred, "s", exclude_first_last=False)
    assert obj.stats()["J-Mean"] == pytest.approx(3 / 5)
    assert obj.stats()["J-Recall"] == pytest.approx(3 / 5)
    assert obj.stats()["F-Mean"] == pytest.approx(3 / 5)
    # J on frames 0..4 = 0 1 1 1 0: bins [0:2] [1:3] [2:4] [3:5] -> decay 0.5 - 0.5
    assert obj.stats()["J-Decay"] == pytest.approx(0.0)


def test_sequence_statistics_by_hand():
    gt = _sequence(6)
    # scored frames 1..4: J = 1, 1, 6/12, 0 ; F = 1, 1, 1, 0.5 (see the hand cases above)
    pred = gt.copy()
    pred[3] = square((8, 10), 2, 4, 3, 5)
    pred[4] = square((8, 10), 2, 4, 5, 7)
    (obj,) = evaluate_sequence(gt, pred, "s")
    np.testing.assert_allclose(obj.j, [1, 1, 0.5, 0])
    np.testing.assert_allclose(obj.f, [1, 1, 1, 0.5])
    s = obj.stats()
    assert s["J-Mean"] == pytest.approx(2.5 / 4)
    assert s["J-Recall"] == pytest.approx(2 / 4)  # 0.5 is not above 0.5
    assert s["J-Decay"] == pytest.approx(1.0 - 0.25)  # bins [0:2], [2:4] of 4 values
    assert s["F-Mean"] == pytest.approx(3.5 / 4)
    assert s["F-Decay"] == pytest.approx(1.0 - 0.75)
    assert s["J&F-Mean"] == pytest.approx((2.5 / 4 + 3.5 / 4) / 2)


def test_sequence_scores_equal_full_frame_measures_at_the_borders():
    # evaluate_sequence works on boxes around each object; objects touching every border
    # must score as on the full frame.
    rng = np.random.default_rng(3)
    t, h, w = 5, 30, 41
    yy, xx = np.mgrid[0:h, 0:w]
    gt = np.zeros((t, h, w), dtype=np.uint8)
    pred = np.zeros_like(gt)
    for i in range(t):
        for k, (cy, cx) in enumerate([(0, 0), (h - 1, w - 1), (h - 1, 5), (3, w - 1)], start=1):
            ry, rx = rng.integers(3, 9, size=2)
            gt[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k
            dy, dx = rng.integers(-3, 4, size=2)
            pred[i][((yy - cy - dy) / ry) ** 2 + ((xx - cx - dx) / rx) ** 2 <= 1.3] = k
    for obj in evaluate_sequence(gt, pred, "b", exclude_first_last=False):
        k = obj.object_id
        f_full = [boundary_measure(gt[i] == k, pred[i] == k)[0] for i in range(t)]
        j_full = region_similarity(gt == k, pred == k)
        np.testing.assert_allclose(obj.f, f_full, rtol=0, atol=1e-12)
        np.testing.assert_allclose(obj.j, j_full, rtol=0, atol=1e-12)
        assert obj.f.max() > 0 and obj.j.min() < 1  # non-trivial cases


def test_objects_void_and_unknown_ids():
    gt = np.zeros((3, 8, 8), dtype=np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 5:7, 5:7] = 2
    gt[:, 0, :] = 255  # void: background for the semi-supervised evaluation
    pred = gt.copy()
    pred[:, 0, :] = 0
    pred[:, 4, 0] = 7  # an id that is not an object: ignored
    objs = evaluate_sequence(gt, pred, "v")
    assert [o.object_id for o in objs] == [1, 2]
    assert all(o.stats()["J&F-Mean"] == 1.0 for o in objs)
    swapped = np.where(pred == 1, 2, np.where(pred == 2, 1, pred))
    assert all(o.stats()["J-Mean"] == 0.0 for o in evaluate_sequence(gt, swapped, "v"))
    # an object missing from the prediction scores 0, the other is unaffected
    one_lost = np.where(pred == 2, 0, pred)
    a, b = evaluate_sequence(gt, one_lost, "v")
    assert (a.stats()["J-Mean"], b.stats()["J-Mean"], b.stats()["F-Mean"]) == (1.0, 0.0, 0.0)


def test_object_appearing_later_counts_both_empty_frames_as_one():
    # objects are 1..max id of the first frame: object 1 is absent there (object 2 is not)
    # and appears at frame 3; frames where both masks are empty score 1
    gt = _sequence(5)
    gt[:3] = 0
    gt[:, 6, 8] = 2
    pred = np.where(gt == 2, 2, 0).astype(np.uint8)
    one, two = evaluate_sequence(gt, pred, "late")
    assert (one.object_id, two.object_id) == (1, 2)
    np.testing.assert_allclose(one.j, [1, 1, 0])  # frames 1, 2 empty in both
    np.testing.assert_allclose(one.f, [1, 1, 0])
    np.testing.assert_allclose(two.j, [1, 1, 1])


def test_global_averages_objects_not_sequences():
    a_gt = np.zeros((3, 8, 8), dtype=np.uint8)
    a_gt[:, 1:3, 1:3] = 1
    a_gt[:, 5:7, 5:7] = 2
    a_pred = np.where(a_gt == 2, 0, a_gt)  # object 2 lost
    b_gt = _sequence(3)
    res = evaluate_sequences({"a": a_gt, "b": b_gt}, {"b": b_gt, "a": a_pred, "x": b_gt})
    assert res.sequences == ["a", "b"]
    g = res.global_stats()
    assert g["J-Mean"] == pytest.approx(2 / 3)  # objects 1, 0, 1 (not (0.5 + 1) / 2)
    assert g["J&F-Mean"] == pytest.approx((g["J-Mean"] + g["F-Mean"]) / 2)
    assert res.sequence_stats("a")["J-Mean"] == pytest.approx(0.5)
    rows = res.rows()
    assert [r["name"] for r in rows] == ["a_1", "a_2", "a", "b_1", "b", "Global"]
    assert [r["level"] for r in rows][-1] == "global"
    table = res.format_table()
    assert "a (mean)" in table and "Global (3 objects)" in table and "b (mean)" not in table
    parsed = list(csv.DictReader(io.StringIO(res.to_csv())))
    assert list(parsed[0]) == ["level", "name", "sequence", "object", "frames", *METRICS]
    assert float(parsed[-1]["J-Mean"]) == pytest.approx(2 / 3, abs=1e-6)


def test_sequence_input_errors():
    gt = _sequence(5)
    with pytest.raises(ValueError, match=r"'s'.*shape"):
        evaluate_sequence(gt, gt[:, :4], "s")
    with pytest.raises(ValueError, match="at least 3"):
        evaluate_sequence(gt[:2], gt[:2], "s")
    assert evaluate_sequence(np.zeros_like(gt), gt, "s") == []  # no object in frame 0
    with pytest.raises(ValueError, match="no object to score"):
        evaluate_sequences({"s": np.zeros_like(gt)}, {"s": gt})
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        evaluate_sequence(gt[0], gt[0], "s")
    with pytest.raises(TypeError, match="integer"):
        evaluate_sequence(gt.astype(float), gt, "s")
    with pytest.raises(ValueError, match="'b'"):
        evaluate_sequences({"a": gt, "b": gt}, {"a": gt})


# -- folders and the CLI ------------------------------------------------------------------------


@pytest.fixture
def davis_dirs(tmp_path):
    gt = np.zeros((6, 40, 60), dtype=np.uint8)
    gt[:, 5:20, 5:25] = 1
    gt[:, 22:35, 30:55] = 2
    pred = gt.copy()
    pred[2:4] = np.roll(gt[2:4], 3, axis=2)
    write_label_dir(tmp_path / "gt" / "seqA", gt)
    write_label_dir(tmp_path / "pred" / "seqA", pred)
    write_label_dir(tmp_path / "gt" / "seqB", gt[:4])
    write_label_dir(tmp_path / "pred" / "seqB", gt[:4])
    return tmp_path, gt, pred


def test_evaluate_dirs_equals_in_memory(davis_dirs):
    root, gt, pred = davis_dirs
    res = evaluate_dirs(root / "gt", root / "pred")
    mem = evaluate_sequences({"seqA": gt, "seqB": gt[:4]}, {"seqA": pred, "seqB": gt[:4]})
    assert res.rows() == mem.rows()
    # one sequence folder on both sides, and a sequence folder against a root
    single = evaluate_dirs(root / "gt" / "seqA", root / "pred" / "seqA")
    assert single.rows()[:3] == mem.rows()[:3]
    assert evaluate_dirs(root / "gt" / "seqA", root / "pred").rows()[:3] == mem.rows()[:3]


def test_evaluate_dirs_missing_first_and_last_predictions_are_allowed(davis_dirs):
    root, _, _ = davis_dirs
    (root / "pred" / "seqA" / "00000.png").unlink()
    (root / "pred" / "seqA" / "00005.png").unlink()
    evaluate_dirs(root / "gt", root / "pred")
    with pytest.raises(DataFileError, match=r"missing prediction .*seqA.00000\.png"):
        evaluate_dirs(root / "gt", root / "pred", exclude_first_last=False)


def test_evaluate_dirs_errors_name_the_file(davis_dirs):
    root, gt, _ = davis_dirs
    (root / "pred" / "seqA" / "00003.png").unlink()
    with pytest.raises(DataFileError, match=r"missing prediction .*00003\.png"):
        evaluate_dirs(root / "gt", root / "pred")
    write_mask(root / "pred" / "seqA" / "00003.png", gt[3][:, :50])
    with pytest.raises(DataFileError, match=r"00003\.png is 50x40 .* ground truth is 60x40"):
        evaluate_dirs(root / "gt", root / "pred")
    with pytest.raises(DataFileError, match="no prediction for sequence 'seqA'"):
        evaluate_dirs(root / "gt", root / "pred" / "seqA")
    with pytest.raises(FileNotFoundError, match="ground-truth folder not found"):
        evaluate_dirs(root / "nope", root / "pred")
    with pytest.raises(FileNotFoundError, match="prediction folder not found"):
        evaluate_dirs(root / "gt", root / "nope")
    (root / "empty").mkdir()
    with pytest.raises(DataFileError, match="no PNG label maps"):
        evaluate_dirs(root / "empty", root / "pred")


def test_cli_eval_prints_table_and_writes_csv(davis_dirs, capsys):
    root, _, _ = davis_dirs
    out = root / "res" / "scores.csv"
    rc = main(["eval", "--gt", str(root / "gt"), "--pred", str(root / "pred"), "--csv", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "J&F-Mean" in printed and "seqA_1" in printed and "Global (4 objects)" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["name"] for r in rows] == [
        "seqA_1",
        "seqA_2",
        "seqA",
        "seqB_1",
        "seqB_2",
        "seqB",
        "Global",
    ]
    assert float(rows[3]["J&F-Mean"]) == 1.0
    assert float(rows[0]["J-Mean"]) < 1.0


def test_cli_eval_replaces_an_existing_csv_only_with_overwrite(davis_dirs, capsys):
    """An existing --csv file (say a bundle's manifest.json) is refused, before the work,
    unless --overwrite; even then only a regular file is replaced, never a folder or a link."""
    root, _, _ = davis_dirs
    argv = ["eval", "--gt", str(root / "gt"), "--pred", str(root / "pred"), "--no-progress"]
    kept = root / "manifest.json"
    kept.write_text('{"format": 1}\n')
    assert main([*argv, "--csv", str(kept)]) == 2
    cap = capsys.readouterr()
    assert cap.err.strip().splitlines() == [
        f"dmm-deploy eval: error: --csv {kept} exists: pass --overwrite to replace it, or "
        "choose another file"
    ]
    assert "J&F-Mean" not in cap.out and kept.read_text() == '{"format": 1}\n'
    assert main([*argv, "--csv", str(kept), "--overwrite"]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {kept}\n")
    assert kept.read_text().startswith("level,name,sequence,object,frames,J&F-Mean")
    assert main([*argv, "--csv", str(root / "gt"), "--overwrite"]) == 2
    assert "is a folder; expected a file name" in capsys.readouterr().err
    assert (root / "gt" / "seqA").is_dir()
    link = root / "link.csv"
    link.symlink_to(kept)
    assert main([*argv, "--csv", str(link), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith(
            "is a symbolic link; --overwrite replaces regular files only, choose another file"
        )
        and len(err.splitlines()) == 1
    )
    assert link.is_symlink()
    new = root / "new.csv"  # a new file needs no --overwrite
    assert main([*argv, "--csv", str(new)]) == 0 and new.is_file()
    assert main([*argv, "--csv", str(root / "gt" / "x.csv"), "--overwrite"]) == 2
    assert "lies in the --gt folder" in capsys.readouterr().err  # --overwrite allows no more


def test_cli_eval_errors_are_one_line(davis_dirs, capsys):
    root, _, _ = davis_dirs
    (root / "pred" / "seqB" / "00002.png").write_bytes(b"not a png")
    rc = main(["eval", "--gt", str(root / "gt"), "--pred", str(root / "pred")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("dmm-deploy eval: error: cannot read mask") and "00002.png" in err
    rc = main(["eval", "--gt", str(root / "missing"), "--pred", str(root / "pred")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing" in err


def test_sample_annotation_scores_itself_perfectly():
    bike = SAMPLES / "masks" / "bike"
    if not bike.is_dir():
        pytest.skip(f"sample data not found at {SAMPLES}")
    res = evaluate_dirs(bike, bike, exclude_first_last=False)
    assert res.sequences == ["bike"]
    assert [o.object_id for o in res.objects] == [1, 2]
    assert res.global_stats()["J&F-Mean"] == 1.0


def test_unknown_ids_extra_frames_and_sequences_warn_or_refuse(davis_dirs, capsys):
    from dmm_deploy.data.output import PARTIAL_MARKER
    from dmm_deploy.eval import unknown_ids

    root, gt, pred = davis_dirs
    assert unknown_ids(gt, np.where(gt == 2, 7, gt)) == [7]
    assert unknown_ids(np.where(gt == 2, 255, gt), gt) == [2]  # 255 in gt is void, not an id
    # objects are 1..max id of the FIRST gt frame: 1 is an object (empty gt), 3 is not
    assert unknown_ids(np.where(gt == 1, 0, gt), np.where(gt == 2, 3, gt)) == [3]
    assert unknown_ids(gt, np.full_like(gt, 255)) == [255]
    odd = pred.copy()
    odd[2, 0, 0] = 9
    write_mask(root / "pred" / "seqA" / "00002.png", odd[2])
    write_mask(root / "pred" / "seqA" / "00099.png", odd[2])  # a frame the gt does not have
    write_label_dir(root / "pred" / "seqZ", gt[:3])  # a sequence the gt does not have
    res = evaluate_dirs(root / "gt", root / "pred")
    assert len(res.warnings) == 3
    assert "1 predicted sequence(s) not in the ground truth, not scored: seqZ" in res.warnings[0]
    assert (
        "'seqA': 1 predicted frame(s) not in the ground truth, not scored: 00099" in res.warnings[1]
    )
    assert "'seqA': predicted ids [9] are not ground-truth objects" in res.warnings[2]
    clean = evaluate_dirs(root / "gt", root / "pred", strict=False).rows()
    assert res.rows() == clean  # warnings change no score
    with pytest.raises(DataFileError, match=r"seqZ \(refused by --strict\)"):
        evaluate_dirs(root / "gt", root / "pred", strict=True)
    assert main(["eval", "--gt", str(root / "gt"), "--pred", str(root / "pred")]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("dmm-deploy eval: warning: ") == 3 and "Global" in cap.out
    (root / "pred" / "seqB" / PARTIAL_MARKER).write_text('{"frames_written": 2, "total": 4}')
    res = evaluate_dirs(root / "gt", root / "pred")
    assert any(
        "seqB is marked partial: unfinished run, 4 of 4 frames written" in w for w in res.warnings
    )


def test_in_memory_evaluation_reports_extra_sequences_and_unknown_ids():
    gt = _sequence(4)
    res = evaluate_sequences({"a": gt}, {"a": np.where(gt == 1, 3, gt), "b": gt})
    assert res.warnings == (
        "1 predicted sequence(s) not in the ground truth, not scored: b",
        "sequence 'a': predicted ids [3] are not ground-truth objects (scored as background)",
    )
