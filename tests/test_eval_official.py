"""The evaluation held to the official DAVIS 2017 evaluator (``davis2017-evaluation``).

The ``oracle_*`` functions below are a TEST ORACLE: a deliberately plain, loop-by-loop
restatement, in this file's own code, of what the official semi-supervised evaluation computes
(``davis2017/metrics.py``: ``db_eval_iou``, ``f_measure``, ``_seg2bmap``; ``davis2017/utils.py``:
``db_statistics``; ``davis2017/davis.py``: ``get_all_masks``; ``davis2017/results.py``:
``read_masks``; ``davis2017/evaluation.py``: ``evaluate``; ``evaluation_method.py``: the two CSV
files). It is written from the official code's behaviour, not copied from it, and it is slow
on purpose (per-pixel loops). The package is compared with it on random sequences; hand-made
cases pin each rule with numbers derived by hand in the comments.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from dmm_deploy.cli import main
from dmm_deploy.data import DataFileError, write_label_dir, write_mask
from dmm_deploy.eval import (
    METRICS,
    db_statistics,
    disk_radius,
    evaluate_dirs,
    evaluate_sequence,
    evaluate_sequences,
    object_ids,
)

# -- the oracle ---------------------------------------------------------------------------------


class Refused(Exception):
    """The official evaluator stops here (it exits: a predicted id above the object count)."""


def oracle_bmap(seg: np.ndarray) -> np.ndarray:
    """``_seg2bmap``: a pixel is a boundary pixel when it differs from its east, south or
    south-east neighbour; on the last row only east counts, on the last column only south,
    and the bottom-right pixel never is one. Neighbours beyond the image are background."""
    seg = seg != 0
    h, w = seg.shape
    b = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            v = seg[y, x]
            if y == h - 1 and x == w - 1:
                b[y, x] = False
            elif y == h - 1:
                b[y, x] = v != seg[y, x + 1]
            elif x == w - 1:
                b[y, x] = v != seg[y + 1, x]
            else:
                b[y, x] = v != seg[y, x + 1] or v != seg[y + 1, x] or v != seg[y + 1, x + 1]
    return b


def oracle_radius(shape: tuple[int, int], bound_th: float) -> int:
    """``bound_pix``: ``bound_th`` itself when >= 1, else ceil(bound_th * norm(shape))."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(shape)))


def oracle_dilate(b: np.ndarray, r: int) -> np.ndarray:
    """``cv2.dilate`` by skimage's ``disk(r)``: the offsets with dy**2 + dx**2 <= r**2 (the
    disk is symmetric, so OpenCV's unreflected kernel changes nothing); outside is empty."""
    offsets = [
        (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy**2 + dx**2 <= r**2
    ]
    h, w = b.shape
    out = np.zeros_like(b)
    for y in range(h):
        for x in range(w):
            out[y, x] = any(
                0 <= y + dy < h and 0 <= x + dx < w and b[y + dy, x + dx] for dy, dx in offsets
            )
    return out


def oracle_j(gt: np.ndarray, pred: np.ndarray) -> float:
    """``db_eval_iou``: |gt & pred| / |gt | pred|, 1 when the union is empty."""
    inter = int(np.sum(gt & pred))
    union = int(np.sum(gt | pred))
    return 1.0 if union == 0 else inter / union


def oracle_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """``f_measure(pred, gt)``: precision over the predicted boundary, recall over the true."""
    r = oracle_radius(gt.shape, bound_th)
    fg_b, gt_b = oracle_bmap(pred), oracle_bmap(gt)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 and n_gt > 0:
        p, rc = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1.0, 1.0
    else:
        p = (fg_b & oracle_dilate(gt_b, r)).sum() / n_fg
        rc = (gt_b & oracle_dilate(fg_b, r)).sum() / n_gt
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def oracle_stats(x: np.ndarray) -> tuple[float, float, float]:
    """``db_statistics``: mean, mean of (x > 0.5), and decay from 4 bins whose edges are
    round(linspace(1, T, 5) + 1e-10) - 1 cast to uint8 (exact for T <= 256)."""
    assert len(x) <= 256
    ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [x[ids[i] : ids[i + 1] + 1] for i in range(4)]
    return float(np.mean(x)), float(np.mean(x > 0.5)), float(np.mean(bins[0]) - np.mean(bins[3]))


def oracle_evaluate(gt: dict, pred: dict, bound_th: float = 0.008):
    """The semi-supervised ``evaluate`` + ``evaluation_method.py``.

    Returns ``(per_object, global_stats, global_csv, per_sequence_csv)`` where per_object maps
    ``<seq>_<k>`` to ``(j_frames, f_frames)``.
    """
    per_object, stats = {}, {k: [] for k in ("JM", "JR", "JD", "FM", "FR", "FD")}
    for seq in gt:
        g = np.where(gt[seq] == 255, 0, gt[seq])  # void -> background
        n = int(g[0].max())  # objects 1..max id of the FIRST frame
        g, p = g[1:-1], pred[seq][1:-1]  # first and last frames are not scored
        if int(p.max()) > n:
            raise Refused(seq)
        for k in range(1, n + 1):
            j = np.array([oracle_j(g[t] == k, p[t] == k) for t in range(len(g))])
            f = np.array([oracle_f(g[t] == k, p[t] == k, bound_th) for t in range(len(g))])
            per_object[f"{seq}_{k}"] = (j, f)
            for name, v in zip(("JM", "JR", "JD"), oracle_stats(j), strict=True):
                stats[name].append(v)
            for name, v in zip(("FM", "FR", "FD"), oracle_stats(f), strict=True):
                stats[name].append(v)
    m = {k: np.mean(v) for k, v in stats.items()}
    glob = [(m["JM"] + m["FM"]) / 2, m["JM"], m["JR"], m["JD"], m["FM"], m["FR"], m["FD"]]
    # pandas' to_csv(float_format="%.3f") formats each number with the % operator
    g_csv = ",".join(METRICS) + "\n" + ",".join("%.3f" % v for v in glob) + "\n"  # noqa: UP031
    s_csv = "Sequence,J-Mean,F-Mean\n" + "".join(
        "%s,%.3f,%.3f\n" % (name, np.mean(j), np.mean(f))  # noqa: UP031
        for name, (j, f) in per_object.items()
    )
    return per_object, dict(zip(METRICS, glob, strict=True)), g_csv, s_csv


# -- the package against the oracle ---------------------------------------------------------------


def _blobs(rng, t, h, w, ids, jitter):
    """(t, h, w) label maps of moving ellipses (some touch the borders), later ids on top."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((t, h, w), dtype=np.uint8)
    for k in ids:
        cy, cx = rng.uniform(-1, h), rng.uniform(-1, w)
        ry, rx = rng.uniform(1.5, h / 3), rng.uniform(1.5, w / 3)
        vy, vx = rng.uniform(-1.5, 1.5, size=2)
        for i in range(t):
            dy, dx = rng.normal(0, jitter, size=2)
            e = ((yy - cy - vy * i - dy) / ry) ** 2 + ((xx - cx - vx * i - dx) / rx) ** 2
            out[i][e <= 1] = k
    return out


def _random_case(seed):
    """A sequence with the rules' corner cases: void, a gap id absent from the first frame, an
    id above the first frame's maximum appearing later, objects vanishing, noisy predictions."""
    rng = np.random.default_rng(seed)
    t, h, w = int(rng.integers(3, 9)), int(rng.integers(9, 23)), int(rng.integers(9, 27))
    gt = _blobs(rng, t, h, w, (1, 2, 3), jitter=0.3)
    gt[0][gt[0] == 2] = 0  # id 2 is missing from the first frame: still an object
    if rng.random() < 0.5:
        gt[1:, : h // 3, : w // 3][gt[1:, : h // 3, : w // 3] == 0] = 4  # later id: not scored
    gt[:, rng.integers(h), :] = 255  # a void row
    gt[0, -1, -1] = 3  # the first frame's largest id: 3 objects
    if t > 3:
        gt[2][gt[2] == 1] = 0  # object 1 vanishes for a frame
    pred = np.where(np.isin(gt, (1, 2, 3)), gt, 0).astype(np.uint8)
    noise = _blobs(rng, t, h, w, (1, 2, 3), jitter=1.0)
    mix = rng.random((t, 1, 1)) < 0.6
    pred = np.where(mix & (noise > 0), noise, pred)
    pred[rng.random(pred.shape) < 0.03] = 0
    return gt, pred.astype(np.uint8)


@pytest.mark.parametrize("bound_th", [0.008, 0.1, 2])
def test_package_equals_official_oracle_on_random_sequences(bound_th):
    cases = {f"s{i}": _random_case(100 * i + int(bound_th * 10)) for i in range(4)}
    gt = {k: v[0] for k, v in cases.items()}
    pred = {k: v[1] for k, v in cases.items()}
    per_object, glob, g_csv, s_csv = oracle_evaluate(gt, pred, bound_th)
    res = evaluate_sequences(gt, pred, bound_th=bound_th)
    assert [o.name for o in res.objects] == list(per_object)
    nontrivial = 0
    for o in res.objects:
        j, f = per_object[o.name]
        np.testing.assert_allclose(o.j, j, rtol=0, atol=1e-12, err_msg=o.name)
        np.testing.assert_allclose(o.f, f, rtol=0, atol=1e-12, err_msg=o.name)
        nontrivial += int(0 < f.min() < 1 or 0 < j.min() < 1)
    assert nontrivial >= 4  # the cases are not all perfect or empty
    ours = res.global_stats()
    assert ours == pytest.approx(glob, abs=1e-12)
    assert res.davis_csv() == (g_csv, s_csv)


def test_oracle_refusal_is_a_warning_here_and_an_error_with_strict(tmp_path):
    gt, pred = _random_case(7)
    pred[1, 0, 0] = 9  # above the object count
    with pytest.raises(Refused):
        oracle_evaluate({"s": gt}, {"s": pred})
    res = evaluate_sequences({"s": gt}, {"s": pred})
    assert "predicted ids [9] are not ground-truth objects" in res.warnings[-1]
    write_label_dir(tmp_path / "gt" / "s", gt)
    write_label_dir(tmp_path / "pred" / "s", pred)
    with pytest.raises(DataFileError, match=r"\[9\].*refused by --strict"):
        evaluate_dirs(tmp_path / "gt", tmp_path / "pred", strict=True)
    # an id in a frame the official evaluator does not read (the first) is not reported
    pred[1, 0, 0] = 0
    pred[0, 0, 0] = 9
    assert evaluate_sequences({"s": gt}, {"s": pred}).warnings == ()


# -- each rule on a hand-made case ----------------------------------------------------------------


def _hand_case():
    """5 frames of 8x10. First frame: objects 1 and 3 (no 2); id 4 appears at frame 2.

    Scored frames 1..3. Object 1 and 3: predicted exactly. Object 2 (absent from the ground
    truth everywhere): predicted on frame 2 only -> J = F = [1, 0, 1] (F on frame 2: no true
    boundary, a predicted one: P = 0, R = 1, F = 0). Decay of 3 values: bin edges
    round(linspace(1, 3, 5) + 1e-10) - 1 = 0, 1, 1, 2, 2 -> mean(x[0:2]) - mean(x[2:3]) =
    0.5 - 1 = -0.5. Object 4 is not an object (above the first frame's maximum, 3).
    """
    gt = np.zeros((5, 8, 10), dtype=np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 5:7, 6:9] = 3
    gt[2:, 5:7, 1:3] = 4
    pred = np.where(gt == 4, 0, gt).astype(np.uint8)
    pred[2, 0, 5:8] = 2
    return gt, pred


def test_objects_are_one_to_the_largest_id_of_the_first_frame():
    gt, pred = _hand_case()
    assert object_ids(gt[0]) == [1, 2, 3]
    assert object_ids(np.where(gt[0] == 3, 255, gt[0])) == [1]  # 255 is void, not an id
    objs = evaluate_sequence(gt, pred, "s")
    assert [o.object_id for o in objs] == [1, 2, 3]
    np.testing.assert_array_equal(objs[1].j, [1, 0, 1])
    np.testing.assert_array_equal(objs[1].f, [1, 0, 1])
    s = objs[1].stats()
    assert (s["J-Mean"], s["J-Recall"], s["J-Decay"]) == pytest.approx((2 / 3, 2 / 3, -0.5))
    assert (s["F-Mean"], s["F-Recall"], s["F-Decay"]) == pytest.approx((2 / 3, 2 / 3, -0.5))
    assert all(o.stats()["J&F-Mean"] == 1.0 for o in (objs[0], objs[2]))


def test_official_csv_files_by_hand(tmp_path, capsys):
    # global: objects (J-Mean) 1, 2/3, 1 -> 8/9 = 0.889; recall the same; decay 0, -0.5, 0
    # -> -1/6 = -0.167; F identical; J&F = (8/9 + 8/9) / 2.
    gt, pred = _hand_case()
    res = evaluate_sequences({"s": gt}, {"s": pred})
    g_text, s_text = res.davis_csv()
    assert g_text == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        "0.889,0.889,0.889,-0.167,0.889,0.889,-0.167\n"
    )
    assert s_text == "Sequence,J-Mean,F-Mean\ns_1,1.000,1.000\ns_2,0.667,0.667\ns_3,1.000,1.000\n"
    write_label_dir(tmp_path / "gt" / "s", gt)
    write_label_dir(tmp_path / "pred" / "s", pred)
    out = tmp_path / "scores"
    argv = ["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    assert main([*argv, "--davis-csv", str(out), "--no-progress"]) == 0
    assert (out / "global_results-val.csv").read_text() == g_text
    assert (out / "per-sequence_results-val.csv").read_text() == s_text
    assert main([*argv, "--davis-csv", str(out), "--set", "test-dev", "--no-progress"]) == 0
    assert (out / "global_results-test-dev.csv").is_file()
    capsys.readouterr()
    assert main([*argv, "--davis-csv", str(out), "--set", "../x"]) == 2
    assert "--set must be a plain name" in capsys.readouterr().err
    # the official files parse as the evaluator's tables
    rows = list(csv.DictReader(io.StringIO(g_text)))
    assert list(rows[0]) == list(METRICS) and len(rows) == 1


def test_davis_folder_scores_the_image_set_of_set_in_its_order(tmp_path, capsys):
    """As the official evaluator: in a DAVIS 2017 folder, --set SET scores the sequences of
    ImageSets/2017/SET.txt in that file's order (train sequences need no prediction);
    --sequences FILE says it explicitly; without either, every sequence folder is scored."""
    gt, pred = _hand_case()
    root = tmp_path / "DAVIS"
    ann = root / "Annotations" / "480p"
    for seq in ("bravo", "alpha", "train-only"):
        write_label_dir(ann / seq, gt)
    for seq in ("bravo", "alpha"):
        write_label_dir(tmp_path / "pred" / seq, pred)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("bravo\nalpha\n")
    out = tmp_path / "scores"
    argv = ["eval", "--gt", str(ann), "--pred", str(tmp_path / "pred"), "--no-progress"]
    assert main([*argv, "--davis-csv", str(out)]) == 0
    assert "scoring the sequences of" in capsys.readouterr().err
    per = (out / "per-sequence_results-val.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in per[1:]] == [
        f"{s}_{i}" for s in ("bravo", "alpha") for i in (1, 2, 3)
    ]
    # a set without its list file in a DAVIS folder: refused (a misspelt set)
    assert main([*argv, "--set", "train"]) == 2
    assert "--set train: " in capsys.readouterr().err
    # outside a DAVIS folder every sequence folder is scored: train-only needs a prediction
    alt = ["eval", "--gt", str(tmp_path / "plain"), "--pred", str(tmp_path / "pred")]
    for seq in ("bravo", "train-only"):
        write_label_dir(tmp_path / "plain" / seq, gt)
    assert main([*alt, "--no-progress"]) == 2
    assert "no prediction for sequence 'train-only'" in capsys.readouterr().err
    listing = tmp_path / "mine.txt"
    listing.write_text("alpha\n")
    assert (
        main(
            [*argv, "--set", "train", "--sequences", str(listing), "--csv", str(tmp_path / "a.csv")]
        )
        == 0
    )
    assert "bravo" not in (tmp_path / "a.csv").read_text()
    listing.write_text("alpha\nzulu\n")
    assert main([*argv, "--sequences", str(listing)]) == 2
    err = capsys.readouterr().err.strip()
    assert "1 listed sequence(s) not in the ground truth" in err and "zulu" in err
    assert main([*argv, "--sequences", str(tmp_path / "none.txt")]) == 2
    assert "--sequences: sequence list not found" in capsys.readouterr().err
    listing.write_bytes(b"\xff\xfe alpha")
    assert main([*argv, "--sequences", str(listing)]) == 2
    assert "mine.txt is not UTF-8 text" in capsys.readouterr().err


def test_bound_th_radius_rules(capsys, tmp_path):
    # diagonal of 480x854 = 979.6..; 0.008 * 979.6 = 7.84 -> 8 pixels
    assert disk_radius((480, 854)) == 8 == oracle_radius((480, 854), 0.008)
    assert disk_radius((480, 854), 3) == 3 == disk_radius((480, 854), 3.0)
    # the official evaluator would build a 4x4 off-centre element from 1.5: refused here
    with pytest.raises(ValueError, match="whole number"):
        disk_radius((480, 854), 1.5)
    gt, _ = _hand_case()
    write_label_dir(tmp_path / "g" / "s", gt)
    rc = main(
        ["eval", "--gt", str(tmp_path / "g"), "--pred", str(tmp_path / "g"), "--bound-th", "2.5"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert (
        err
        == "dmm-deploy eval: error: --bound-th >= 1 is a radius in pixels and must be a whole number, got 2.5"
    )


def test_frames_are_ordered_as_the_official_evaluator_sorts_file_names(tmp_path):
    # names 8, 9, 10, 11 sort as 10, 11, 8, 9 (code points): the official evaluator scores
    # 11 and 8 and leaves out 10 and 9. Wrong predictions on 9 and 10 only -> J-Mean 1.
    gt = np.zeros((4, 8, 8), dtype=np.uint8)
    gt[:, 2:5, 2:5] = 1
    pred = gt.copy()
    pred[[1, 2]] = 0  # frames "9" and "10"
    names = ["8", "9", "10", "11"]
    write_label_dir(tmp_path / "gt" / "s", gt, names)
    write_label_dir(tmp_path / "pred" / "s", pred, names)
    res = evaluate_dirs(tmp_path / "gt", tmp_path / "pred")
    assert res.global_stats()["J-Mean"] == 1.0
    # in natural order (8, 9, 10, 11) frames 9 and 10 would be scored: J-Mean 0
    assert evaluate_sequences({"s": gt}, {"s": pred}).global_stats()["J-Mean"] == 0.0


def test_unscored_predictions_are_not_read(tmp_path):
    gt, pred = _hand_case()
    write_label_dir(tmp_path / "gt" / "s", gt)
    write_label_dir(tmp_path / "pred" / "s", pred)
    first, last = tmp_path / "pred" / "s" / "00000.png", tmp_path / "pred" / "s" / "00004.png"
    first.write_bytes(b"not a png")  # the official evaluator never opens these two
    write_mask(last, np.zeros((3, 3), dtype=np.uint8))
    res = evaluate_dirs(tmp_path / "gt", tmp_path / "pred")
    assert res.global_stats()["J-Mean"] == pytest.approx(8 / 9)
    with pytest.raises(DataFileError, match="cannot read mask"):
        evaluate_dirs(tmp_path / "gt", tmp_path / "pred", exclude_first_last=False)


def test_sequence_without_object_in_its_first_frame_is_not_scored(tmp_path):
    # the official evaluator finds 0 objects there and adds no row
    gt, pred = _hand_case()
    late = gt.copy()
    late[0] = 0
    res = evaluate_sequences({"a": late, "s": gt}, {"a": pred, "s": pred})
    assert res.sequences == ["s"]
    assert "sequence 'a': the first ground-truth frame holds no object" in res.warnings[0]
    write_label_dir(tmp_path / "gt" / "a", late)
    write_label_dir(tmp_path / "gt" / "s", gt)
    for s in ("a", "s"):
        write_label_dir(tmp_path / "pred" / s, pred)
    assert evaluate_dirs(tmp_path / "gt", tmp_path / "pred").rows() == res.rows()
    with pytest.raises(DataFileError, match=r"no object.*refused by --strict"):
        evaluate_dirs(tmp_path / "gt", tmp_path / "pred", strict=True)


def test_decay_bins_of_long_sequences_use_the_intended_frames():
    # Deliberate deviation: the official code casts the bin edges to uint8, which wraps for
    # more than 256 values; here the edges stay round(linspace(1, T, 5) + 1e-10) - 1.
    x = np.r_[np.ones(100), np.zeros(200)]
    edges = [0, 75, 150, 224, 299]  # 1 + 299 * k / 4 -> 1, 75.75, 150.5, 225.25, 300
    assert db_statistics(x)[2] == pytest.approx(np.mean(x[: edges[1] + 1]) - np.mean(x[224:]))
    assert math.isclose(db_statistics(x)[2], 1.0)


def test_include_late_adds_later_objects_and_keeps_the_official_ones(tmp_path, capsys):
    # id 4 appears at frame 2 (above the first frame's largest id, 3); never predicted:
    # J on scored frames 1, 2, 3 = 1 (both empty), 0, 0.
    gt, pred = _hand_case()
    official = evaluate_sequence(gt, pred, "s")
    late = evaluate_sequence(gt, pred, "s", include_late=True)
    assert [o.object_id for o in late] == [1, 2, 3, 4]
    for a, b in zip(official, late[:3], strict=True):
        np.testing.assert_array_equal(a.j, b.j)
        np.testing.assert_array_equal(a.f, b.f)
    np.testing.assert_array_equal(late[3].j, [1, 0, 0])
    with pytest.raises(ValueError, match="include_late needs"):
        object_ids(gt[0], include_late=True)
    pred4 = pred.copy()
    pred4[3][gt[3] == 4] = 4
    assert (
        evaluate_sequences({"s": gt}, {"s": pred4})
        .warnings[0]
        .endswith("predicted ids [4] are not ground-truth objects (scored as background)")
    )
    assert evaluate_sequences({"s": gt}, {"s": pred4}, include_late=True).warnings == ()
    write_label_dir(tmp_path / "gt" / "s", gt)
    write_label_dir(tmp_path / "pred" / "s", pred4)
    argv = ["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    assert main([*argv, "--include-late", "--no-progress"]) == 0
    assert "s_4" in capsys.readouterr().out


def test_eval_outputs_never_replace_inputs_or_each_other(tmp_path, capsys):
    gt, pred = _hand_case()
    write_label_dir(tmp_path / "gt" / "s", gt)
    write_label_dir(tmp_path / "pred" / "s", pred)
    listing = tmp_path / "list.txt"
    listing.write_text("s\n")
    out = tmp_path / "scores"
    out.mkdir()
    (out / "global_results-val.csv").write_text("earlier")
    argv = ["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--no-progress"]
    first_gt = tmp_path / "gt" / "s" / "00000.png"
    before = first_gt.read_bytes()
    cases = [
        (["--csv", str(first_gt)], r"--csv .*00000\.png lies in the --gt folder"),
        (["--csv", str(tmp_path / "pred" / "x.csv")], r"--csv .* lies in the --pred folder"),
        (["--csv", str(listing), "--sequences", str(listing)], r"--csv .* is the --sequences file"),
        (["--davis-csv", str(out)], r"--davis-csv .* already holds global_results-val\.csv"),
        (["--davis-csv", str(tmp_path / "new"), "--csv", str(tmp_path / "new" / "global_results-val.csv")], r"is also written by --csv"),
        (["--bound-th", "inf"], r"--bound-th must be a fraction of the diagonal \(< 1\) or at most 1024 pixels"),
    ]  # fmt: skip
    import re

    for extra, pattern in cases:
        assert main([*argv, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert first_gt.read_bytes() == before and listing.read_text() == "s\n"
    assert (out / "global_results-val.csv").read_text() == "earlier"
    # a root holding PNGs and sequence folders is ambiguous
    write_label_dir(tmp_path / "gt", gt)
    assert main(argv) == 2
    assert "holds both PNGs and sequence folders" in capsys.readouterr().err
