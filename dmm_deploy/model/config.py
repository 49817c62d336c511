"""One frozen dataclass holds every setting of the DMM-Net model."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

__all__ = ["BACKBONES", "COMPATS", "COMPAT_FIXED", "COMPAT_SWITCHES", "MATCHINGS", "DMMConfig"]

# Output channels of torchvision ResNet layer1..layer4 (strides 4, 8, 16, 32).
BACKBONES: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}

COMPATS = ("default", "original")
MATCHINGS = ("dmm", "exact")

# The behaviour switches that differ between the presets: field -> (allowed values, value
# under compat="default", value under compat="original").
COMPAT_SWITCHES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "matcher_variant": (("listing1", "original"), "listing1", "original"),
    "input_resize": (("bilinear", "nearest"), "bilinear", "nearest"),
    "merge_at": (("frame", "input"), "frame", "input"),
    "proposal_order": (("score", "index"), "score", "index"),
    "empty_proposals": (("drop", "keep"), "drop", "keep"),
    "no_detections": (("pad", "last"), "pad", "last"),
}

# Numeric settings compat="original" pins to the original's test-time values
# (dmm/configs/eval.yaml, encoder.nms_thresh, the masker's 0.4 threshold, the pooler).
COMPAT_FIXED: dict[str, float | int] = {
    "roi_size": 14,
    "roi_sampling_ratio": 2,
    "n_grad": 40,
    "n_proj": 5,
    "lr": 0.1,
    "score_weight": 0.3,
    "top_k": 50,
    "nms_iou": 0.4,
    "box_threshold": 0.4,
    "mask_threshold": 0.5,
}


@dataclass(frozen=True)
class DMMConfig:
    """Settings of the DMM-Net model; the numeric defaults are the original's test-time values,
    the pipeline's behaviour is this project's unless ``compat="original"``.

    Attributes:
        backbone: ``"resnet101"`` (the original's main model), ``"resnet50"`` (its second
            released model), ``"resnet34"`` (an option of the original code, no released
            weights) or ``"resnet18"`` (not in the original; small and fast, for tests).
        input_size: ``(height, width)`` the frames are resized to before the encoder
            (the original: 255 x 448).
        hidden_size: width of the heads and of the first ConvLSTM (the original: 128); the skip
            heads have ``h/4, h/2, h, h`` channels at strides 4, 8, 16, 32, the matching
            heads ``h`` at every stride, the ConvLSTMs ``h, h/2, h/4, h/8``. A multiple of 8.
        roi_size: RoIAlign output side (14).
        roi_sampling_ratio: RoIAlign sampling points per bin side (2).
        n_grad: outer steps of the matching layer (40).
        n_proj: Dykstra cycles per outer step (5).
        lr: gradient step of the matching layer (0.1).
        score_weight: weight of the mask IoU in the similarity; the cosine of the embeddings
            gets ``1 - score_weight`` (0.3).
        top_k: proposals kept after NMS (50; which ones: ``proposal_order``).
        nms_iou: IoU threshold of the NMS over the proposals' tight boxes (0.4).
        box_threshold: a proposal's box is the tight box of ``mask > box_threshold`` (0.4).
        mask_threshold: masks are binarised at this value for the IoU term of the cost (0.5).
        refine: ``True`` runs the ConvLSTM refinement decoder (the full model); ``False`` is the
            matching-only mode of the paper's ablation (each object's output is the mask of the
            proposal it is matched to).
        matcher_backend: backend of :func:`dmm_deploy.matching.dmm_match` (``"auto"``,
            ``"torch"`` or ``"triton"``).
        mean, std: per-channel normalisation of RGB frames scaled to [0, 1] (ImageNet).
        compat: ``"default"`` (this project's pipeline) or ``"original"`` (a frozen preset that
            reproduces the original code's test-time pipeline, for its released checkpoints).
            The preset decides the six switches below and pins :data:`COMPAT_FIXED` (the
            numbers above: 40 x 5 steps at lr 0.1, top 50, NMS 0.4, ...).
        matching: ``"dmm"`` (the DMM layer) or ``"exact"``: the layer is replaced at inference
            by the exact assignment of the padded cost (Hungarian,
            :func:`dmm_deploy.matching.exact_assign`; needs scipy). The original code has the
            same option (``matching.algo: hun``), so it combines with either compat.

    Behaviour switches (``None``: the compat preset's value, filled in at construction):

        matcher_variant: ``"listing1"`` (the specification) or ``"original"`` (the original
            code's solver: non-negativity -> columns -> rows, mean of the pre-projection
            iterates, early exits); passed to :func:`dmm_deploy.matching.dmm_match`.
        input_resize: how frames and annotations reach ``input_size``: ``"bilinear"`` (frames
            bilinear antialiased, annotations ``nearest-exact``) or ``"nearest"`` (both with
            PIL's NEAREST: the default filter of ``Image.resize`` in the original's pinned
            Pillow 6.1 for frames, and its explicit filter for annotations).
        merge_at: ``"frame"`` (probabilities upsampled bilinearly to the frame, then merged) or
            ``"input"`` (merged at ``input_size``, the label map then resized to the frame with
            PIL's NEAREST: the original writes 255 x 448 label maps and its evaluation resizes
            them so to the annotation's size).
        proposal_order: which ``top_k`` NMS survivors are kept and in what order: ``"score"``
            (the best scores, best first) or ``"index"`` (the first survivors in ascending
            detection index order, as the original's maskrcnn-benchmark NMS returns them).
        empty_proposals: a proposal whose pasted mask has no pixel above ``box_threshold`` is
            ``"drop"``-ped, or kept (``"keep"``) with the original's box ``[0, 0, h, w]``
            (``h, w = input_size``; the original's ``binmask_to_box`` puts the height in the
            x2 slot) and its soft mask.
        no_detections: a frame with no detection gets no proposal (``"pad"``: every object
            matches an empty padding column), or (``"last"``) the proposals of the most recent
            earlier frame of the stream that had detections (none yet: as ``"pad"``). The
            original substitutes the last entry of its predictions file, a frame of another
            video; a stream has no such file, the last detections seen are its nearest
            equivalent.

    With ``compat="original"`` an explicit switch or a :data:`COMPAT_FIXED` field that differs
    from the preset raises ``ValueError`` (the preset is frozen); with ``compat="default"``
    every switch may be set on its own (ablations). All fields are plain JSON values
    (``dataclasses.asdict`` gives the bundle manifest's form, lists for tuples), and
    ``DMMConfig(**that)`` rebuilds an equal config.
    """

    backbone: str = "resnet101"
    input_size: tuple[int, int] = (255, 448)
    hidden_size: int = 128
    roi_size: int = 14
    roi_sampling_ratio: int = 2
    n_grad: int = 40
    n_proj: int = 5
    lr: float = 0.1
    score_weight: float = 0.3
    top_k: int = 50
    nms_iou: float = 0.4
    box_threshold: float = 0.4
    mask_threshold: float = 0.5
    refine: bool = True
    matcher_backend: str = "auto"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    compat: str = "default"
    matching: str = "dmm"
    matcher_variant: str | None = None
    input_resize: str | None = None
    merge_at: str | None = None
    proposal_order: str | None = None
    empty_proposals: str | None = None
    no_detections: str | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        size = tuple(self.input_size)
        if len(size) != 2 or not all(_is_int(v) and v >= 32 for v in size):
            raise ValueError(
                f"input_size must be (height, width) with both >= 32, got {self.input_size!r}"
            )
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        if not _is_int(self.hidden_size) or self.hidden_size < 8 or self.hidden_size % 8:
            raise ValueError(
                f"hidden_size must be a positive multiple of 8, got {self.hidden_size!r}"
            )
        for name in ("roi_size", "roi_sampling_ratio", "n_grad", "n_proj", "top_k"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        for name in ("score_weight", "nms_iou", "box_threshold", "mask_threshold"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.refine, bool):
            raise TypeError(f"refine must be a bool, got {type(self.refine).__name__}")
        if self.matcher_backend not in ("auto", "torch", "triton"):
            raise ValueError(
                f"matcher_backend must be 'auto', 'torch' or 'triton', got {self.matcher_backend!r}"
            )
        for name in ("mean", "std"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(_is_real(v) for v in value):
                raise ValueError(f"{name} must be three numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.compat not in COMPATS:
            raise ValueError(f"compat must be one of {COMPATS}, got {self.compat!r}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {self.matching!r}")
        original = self.compat == "original"
        for name, (allowed, default, orig) in COMPAT_SWITCHES.items():
            value = getattr(self, name)
            preset = orig if original else default
            if value is None:
                object.__setattr__(self, name, preset)
            elif value not in allowed:
                raise ValueError(f"{name} must be one of {allowed} (or None), got {value!r}")
            elif original and value != preset:
                raise ValueError(
                    f"compat='original' fixes {name}={preset!r}, got {value!r} "
                    "(use compat='default' to combine settings freely)"
                )
        if original:
            for name, preset in COMPAT_FIXED.items():
                if getattr(self, name) != preset:
                    raise ValueError(
                        f"compat='original' fixes {name}={preset!r}, got {getattr(self, name)!r} "
                        "(use compat='default' to change it)"
                    )

    @property
    def backbone_channels(self) -> tuple[int, int, int, int]:
        """Channels of the backbone's layer1..layer4 outputs (strides 4, 8, 16, 32)."""
        return BACKBONES[self.backbone]

    @property
    def skip_channels(self) -> tuple[int, int, int, int]:
        """Channels of the skip heads at strides 4, 8, 16, 32 (128 -> 32, 64, 128, 128)."""
        h = self.hidden_size
        return (h // 4, h // 2, h, h)

    @property
    def lstm_channels(self) -> tuple[int, int, int, int]:
        """Hidden channels of the four ConvLSTM cells, coarse to fine (128 -> 128, 64, 32, 16)."""
        h = self.hidden_size
        return (h, h // 2, h // 4, h // 8)

    @property
    def embedding_dim(self) -> int:
        """Length of a box embedding: the matching-head width times four levels (512)."""
        return 4 * self.hidden_size

    @property
    def switches(self) -> dict[str, str]:
        """The behaviour switches (:data:`COMPAT_SWITCHES`) with their resolved values."""
        return {name: getattr(self, name) for name in COMPAT_SWITCHES}

    def replace(self, **changes) -> DMMConfig:
        """A copy with some fields changed (validated again).

        Changing ``compat`` re-derives the behaviour switches not named in ``changes`` from
        the new preset.
        """
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown DMMConfig field(s): {', '.join(unknown)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if "compat" in changes:
            for name in COMPAT_SWITCHES:
                values[name] = None
        values.update(changes)
        return DMMConfig(**values)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
