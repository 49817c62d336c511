"""``dmm-deploy export-model``: export DMM-Net to a runtime bundle (stage graphs + manifest).

    dmm-deploy export-model --out bundle/ (--checkpoint DIR | --random-weights)
        [--backbone resnet101] [--input-size 255x448] [--precision fp32|mixed|fp16]
        [--proposals precomputed|maskrcnn [--maskrcnn-weights FILE|COCO_V1]
         [--maskrcnn-version v1|v2] [--detector-size 800]]
        [--compat original|default] [--matching dmm|exact]
        [--matching-only] [--seed 0] [--threads 1] [--overwrite]

Every graph passes onnx.checker, the TensorRT 10.3 / 11.0 parser check and a parity check
against torch (onnxruntime CPU); a failure exits non-zero. torch is imported inside ``run``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from dmm_deploy.segment_job import MAX_SIDE, check_threads, parse_size

__all__ = ["add_args", "model_config", "run"]

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101")

MIN_DETECTOR_SIDE = 64
"""Smallest ``--detector-size`` exported: at 32 the random detector's pyramid levels are 1x1
and its export parity check fails (``segment`` runs the torch detector down to 32)."""

MASKRCNN_DEFAULTS = {"maskrcnn_weights": None, "maskrcnn_version": "v1", "detector_size": 800}


CACHE_FOLDER = "engines"
"""The folder the runtime writes its caches to beside a bundle's files
(:func:`dmm_deploy.runtime.backends.open_stage`'s ``<bundle>/engines/``): replaced with the
bundle."""


def _bundle_files(folder: Path) -> set[str] | None:
    """The names a bundle export wrote in ``folder``: ``manifest.json`` and the stage files
    its manifest names; None when ``folder`` holds no bundle written by this command (its
    manifest says so)."""
    import json

    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != "dmm-deploy-bundle":
        return None
    stages = data.get("stages")
    files = {"manifest.json"}
    for stage in stages.values() if isinstance(stages, dict) else ():
        if isinstance(stage, dict) and isinstance(stage.get("file"), str):
            files.add(stage["file"])
    return files


def _foreign(folder: Path, files: set[str]) -> list[str]:
    """The entries of bundle ``folder`` that no export wrote: anything but its ``files``
    (regular files) and the runtime's :data:`CACHE_FOLDER` (a folder); links count as
    foreign."""
    foreign = []
    for e in folder.iterdir():
        if e.is_symlink():
            ours = False
        elif e.name == CACHE_FOLDER:
            ours = e.is_dir()
        else:
            ours = e.name in files and e.is_file()
        if not ours:
            foreign.append(e.name)
    return sorted(foreign)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that would lose a user's files: it must be new, empty, or (with
    ``overwrite``) a bundle written by this command holding nothing else (``manifest.json``,
    the stage files it names, the runtime's :data:`CACHE_FOLDER`)."""
    from dmm_deploy.data.output import check_output_path

    check_output_path(out, "--out", "folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    files = _bundle_files(out)
    if files is None:
        names = ", ".join(sorted(e.name for e in out.iterdir())[:3])
        raise ValueError(
            f"--out {out} is not empty and holds no bundle ({names}); choose a new or empty folder"
        )
    foreign = _foreign(out, files)
    if foreign:
        names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if foreign[3:] else "")
        raise ValueError(
            f"--out {out} holds a bundle and files that export-model did not write ({names}); "
            "they are not deleted: move them or choose a new or empty folder"
        )
    if not overwrite:
        raise ValueError(f"--out {out} holds a bundle: pass --overwrite to replace it")


def add_args(parser: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="bundle folder to write: a new or empty folder, or an earlier bundle with --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the bundle in --out (kept untouched until the new one has passed its checks)",
    )
    w = parser.add_mutually_exclusive_group()
    w.add_argument(
        "--checkpoint", metavar="PATH", help="original DMM-Net checkpoint dir or trainer.pt"
    )
    w.add_argument(
        "--random-weights",
        action="store_true",
        help="export random weights (tests, smoke runs, timing: the masks are meaningless)",
    )
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default="resnet101")
    parser.add_argument("--input-size", default="255x448", metavar="HxW", help="model input size")
    parser.add_argument("--precision", choices=("fp32", "mixed", "fp16"), default="fp32")
    parser.add_argument(
        "--proposals",
        choices=("precomputed", "maskrcnn"),
        default="precomputed",
        help="where the runtime gets proposals: a .npz given at run time (precomputed), or "
        "torchvision Mask R-CNN exported into the bundle (maskrcnn)",
    )
    parser.add_argument(
        "--maskrcnn-weights",
        metavar="FILE",
        help="Mask R-CNN weights file or torchvision weights name (with --proposals maskrcnn; "
        "--random-weights exports a random detector)",
    )
    parser.add_argument("--maskrcnn-version", choices=("v1", "v2"), default="v1")
    parser.add_argument(
        "--detector-size",
        type=int,
        default=800,
        metavar="PX",
        help=f"Mask R-CNN's shorter side, {MIN_DETECTOR_SIDE}..2048 (default 800)",
    )
    parser.add_argument(
        "--compat",
        choices=("original", "default"),
        help="'original': the original code's test-time pipeline, for its checkpoints (default "
        "with --checkpoint); 'default': this project's (default otherwise); saved in the manifest",
    )
    parser.add_argument(
        "--matching",
        choices=("dmm", "exact"),
        default="dmm",
        help="'dmm': the DMM matching layer (default); 'exact': the exact assignment "
        "(Hungarian; the runtime solves it on the host without scipy)",
    )
    parser.add_argument(
        "--matching-only", action="store_true", help="no refinement decoder (the paper's ablation)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for parity")


def model_config(args: argparse.Namespace, size: tuple[int, int]):
    """The ``DMMConfig`` to export: ``--compat`` (None: ``"original"`` with ``--checkpoint``,
    whose weights were evaluated with the original's pipeline, else ``"default"``, as
    ``segment --checkpoint`` chooses), ``--matching``, ``--backbone``, ``--matching-only``."""
    from dmm_deploy.model import DMMConfig

    compat = args.compat or ("original" if args.checkpoint is not None else "default")
    return DMMConfig(
        backbone=args.backbone,
        input_size=size,
        refine=not args.matching_only,
        compat=compat,
        matching=args.matching,
    )


def run(args: argparse.Namespace) -> int:
    """Export; 0 on success, 1 when a check fails (the problems are printed)."""
    if args.checkpoint is None and not args.random_weights:
        raise ValueError(
            "no weights: pass --checkpoint DIR (an original DMM-Net checkpoint) or "
            "--random-weights for a smoke run"
        )
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint not found: {args.checkpoint}")
    size = parse_size(args.input_size)
    if args.proposals == "maskrcnn" and args.maskrcnn_weights is None and not args.random_weights:
        raise ValueError(
            "--maskrcnn-weights: needed with --proposals maskrcnn (or --random-weights)"
        )
    if args.proposals != "maskrcnn":
        for key, default in MASKRCNN_DEFAULTS.items():
            if getattr(args, key) != default:
                raise ValueError(
                    f"--{key.replace('_', '-')} applies only with --proposals maskrcnn"
                )
    if not MIN_DETECTOR_SIDE <= args.detector_size <= MAX_SIDE:
        raise ValueError(
            f"--detector-size must be in {MIN_DETECTOR_SIDE}..{MAX_SIDE} pixels, "
            f"got {args.detector_size}"
        )
    check_threads(args.threads)
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be in 0..2**63-1, got {args.seed}")
    if not str(args.out).strip():
        raise ValueError(f"--out must name a folder, got {args.out!r}")
    out = Path(args.out)
    check_out(out, args.overwrite)

    import torch

    from dmm_deploy.data.output import replace_folder
    from dmm_deploy.export.bundle import BundleExportError, export_bundle
    from dmm_deploy.model import DMMNet, MaskRCNNProposals, load_original_checkpoint
    from dmm_deploy.model.checkpoint import torch_load_reason

    cfg = model_config(args, size)
    torch.manual_seed(args.seed)
    net = DMMNet(cfg)
    if args.checkpoint is not None:
        load_original_checkpoint(net, args.checkpoint)
    detector = None
    if args.proposals == "maskrcnn":
        try:
            detector = MaskRCNNProposals(
                args.maskrcnn_weights,
                version=args.maskrcnn_version,
                min_size=args.detector_size,
                max_size=round(args.detector_size * 1333 / 800),
            ).model
        except (ValueError, FileNotFoundError):
            raise
        except Exception as e:  # garbage file (unpickling), another model's state dict
            raise ValueError(
                f"--maskrcnn-weights {args.maskrcnn_weights}: not usable as torchvision Mask "
                f"R-CNN {args.maskrcnn_version} weights ({torch_load_reason(e)})"
            ) from e
    # written beside --out and moved in place only once every check passed: an interrupted
    # or failed export leaves --out (an earlier bundle, too) as it was
    target = out.resolve()  # "--out ." has no name of its own
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
    try:
        export_bundle(
            net.eval(),
            tmp,
            precision=args.precision,
            proposals=args.proposals,
            detector=detector,
            threads=args.threads,
        )
    except BundleExportError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"dmm-deploy export-model: {e}", file=sys.stderr)
        return 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # again: --out may have changed while the export ran
        check_out(out, args.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, target)
    print(
        f"bundle    {out} ({args.precision}, {args.backbone} at {size[0]}x{size[1]}, "
        f"compat {cfg.compat}, matching {cfg.matching})"
    )
    return 0
