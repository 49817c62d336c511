"""``dmm-deploy export-model``: export DMM-Net to a runtime bundle (stage graphs + manifest).

    dmm-deploy export-model --out bundle/ (--checkpoint DIR | --random-weights)
        [--backbone resnet101] [--input-size 255x448] [--precision fp32|mixed|fp16]
        [--proposals precomputed|maskrcnn [--maskrcnn-weights FILE|COCO_V1]
         [--maskrcnn-version v1|v2] [--detector-size 800]]
        [--compat original|default] [--matching dmm|exact]
        [--matching-only] [--seed 0] [--threads 1]

Every graph passes onnx.checker, the TensorRT 10.3 / 11.0 parser check and a parity check
against torch (onnxruntime CPU); a failure exits non-zero. torch is imported inside ``run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_args", "model_config", "run"]

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101")


def add_args(parser: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    parser.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
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
        "--detector-size", type=int, default=800, metavar="PX", help="Mask R-CNN's shorter side"
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


def _parse_size(text: str) -> tuple[int, int]:
    parts = str(text).lower().split("x")
    try:
        size = (int(parts[0]), int(parts[1]))
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"--input-size must be HEIGHTxWIDTH, e.g. 255x448, got {text!r}") from None
    if min(size) < 32:
        raise ValueError(f"--input-size must be at least 32x32, got {text!r}")
    return size


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
    size = _parse_size(args.input_size)
    if args.proposals == "maskrcnn" and args.maskrcnn_weights is None and not args.random_weights:
        raise ValueError(
            "--maskrcnn-weights: needed with --proposals maskrcnn (or --random-weights)"
        )
    if args.detector_size < 32:
        raise ValueError(f"--detector-size must be >= 32, got {args.detector_size}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a folder, got the file {out}")

    import torch

    from dmm_deploy.export.bundle import BundleExportError, export_bundle
    from dmm_deploy.model import DMMNet, MaskRCNNProposals, load_original_checkpoint

    cfg = model_config(args, size)
    torch.manual_seed(args.seed)
    net = DMMNet(cfg)
    if args.checkpoint is not None:
        load_original_checkpoint(net, args.checkpoint)
    detector = None
    if args.proposals == "maskrcnn":
        detector = MaskRCNNProposals(
            args.maskrcnn_weights,
            version=args.maskrcnn_version,
            min_size=args.detector_size,
            max_size=round(args.detector_size * 1333 / 800),
        ).model
    try:
        export_bundle(
            net.eval(),
            out,
            precision=args.precision,
            proposals=args.proposals,
            detector=detector,
            threads=args.threads,
        )
    except BundleExportError as e:
        print(f"dmm-deploy export-model: {e}")
        return 1
    print(
        f"bundle    {out} ({args.precision}, {args.backbone} at {size[0]}x{size[1]}, "
        f"compat {cfg.compat}, matching {cfg.matching})"
    )
    return 0
