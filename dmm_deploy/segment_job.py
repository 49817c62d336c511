"""``dmm-deploy segment``: arguments (torch-free) and run."""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``dmm-deploy segment``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", metavar="DIR", help="folder of .jpg/.png frames")
    src.add_argument("--video", metavar="FILE", help="video file (needs imageio-ffmpeg)")
    p.add_argument("--mask", metavar="PNG", help="first frame's annotation (DAVIS palette PNG)")
    p.add_argument(
        "--annotations",
        metavar="DIR",
        help="annotations named like the frames (objects appearing later); "
        "its PNG for the first frame serves when --mask is not given",
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder of palette PNGs")
    p.add_argument(
        "--proposals",
        default="maskrcnn",
        metavar="SRC",
        help="'maskrcnn' (default, torchvision Mask R-CNN) or 'precomputed:FILE.npz'",
    )
    p.add_argument(
        "--maskrcnn-weights",
        metavar="FILE",
        help="torchvision Mask R-CNN weights file (e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth), "
        "or a torchvision weights name such as COCO_V1 (downloads)",
    )
    p.add_argument("--maskrcnn-version", default="v1", metavar="V", help="v1 (default) or v2")
    p.add_argument(
        "--detector-size",
        type=int,
        default=800,
        metavar="PX",
        help="Mask R-CNN's shorter side (800)",
    )
    p.add_argument(
        "--checkpoint", metavar="PATH", help="original DMM-Net checkpoint dir or trainer.pt"
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="allow random weights for what has none given (smoke runs: meaningless masks)",
    )
    p.add_argument(
        "--backbone",
        default="resnet101",
        metavar="NAME",
        help="resnet101 (default), resnet50, resnet34, resnet18",
    )
    p.add_argument("--input-size", default="255x448", metavar="HxW", help="model input (255x448)")
    p.add_argument(
        "--matching-only", action="store_true", help="no refinement: matched proposal masks"
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default) or cuda")
    p.add_argument("--overlay", metavar="FILE", help="overlay as a .png strip or an .mp4 video")
    p.add_argument("--max-frames", type=int, metavar="N", help="only the first N frames")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``dmm-deploy segment``."""
    from dmm_deploy.model.segment_job import options_from_args, run_segment

    try:
        run_segment(options_from_args(args))
    except ImportError as e:  # a video without imageio-ffmpeg
        raise ValueError(str(e)) from e
    return 0
