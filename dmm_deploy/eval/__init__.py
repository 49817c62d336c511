"""J&F evaluation of video object segmentation with the DAVIS 2017 semantics.

In memory: :func:`evaluate_sequences` (sequence name -> ``(T, H, W)`` label arrays); on disk:
:func:`evaluate_dirs` (DAVIS-layout folders of palette PNGs). Both return
:class:`EvalResults`. Per-frame measures are in :mod:`dmm_deploy.eval.metrics`.
"""

from dmm_deploy.eval.evaluate import (
    DAVIS_SEQUENCE_COLUMNS,
    METRICS,
    EvalResults,
    ObjectScores,
    evaluate_sequence,
    evaluate_sequences,
    object_ids,
    scored_frames,
    unknown_ids,
)
from dmm_deploy.eval.folders import evaluate_dirs, find_sequences
from dmm_deploy.eval.metrics import (
    boundary_measure,
    db_statistics,
    dilate_disk,
    disk,
    disk_radius,
    region_similarity,
    seg2bmap,
)

__all__ = [
    "DAVIS_SEQUENCE_COLUMNS",
    "METRICS",
    "EvalResults",
    "ObjectScores",
    "boundary_measure",
    "db_statistics",
    "dilate_disk",
    "disk",
    "disk_radius",
    "evaluate_dirs",
    "evaluate_sequence",
    "evaluate_sequences",
    "find_sequences",
    "object_ids",
    "region_similarity",
    "scored_frames",
    "seg2bmap",
    "unknown_ids",
]
