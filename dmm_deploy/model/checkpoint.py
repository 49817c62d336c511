"""Import the original DMM-Net checkpoints (ZENGXH/DMM_Net) into :class:`DMMNet`.

The original saves, per checkpoint directory, ``trainer.pt``: the state dict of its
``Trainer`` module, whose ``encoder`` (``FeatureExtractor``) and ``decoder`` (``RSISMask``)
hold every parameter (``encoder.*``, ``decoder.*``; a ``module.`` appears where
``DataParallel`` wrapped a module). Older checkpoints hold ``encoder.pt`` and ``decoder.pt``
separately. The names map as follows (``i`` = 2..5 is the original's level, stride 2^i;
``j = i - 2`` is ours):

=================================== ==========================================
original                            ``DMMNet``
=================================== ==========================================
``encoder.base.<resnet name>``      ``encoder.backbone.<resnet name>``
``encoder.base.fc.*``               (unused classifier, ignored)
``encoder.sk{i}.*``                 ``encoder.skip_heads.{j}.conv.*``
``encoder.bn{i}.*``                 ``encoder.skip_heads.{j}.bn.*``
``encoder.prop{i}.0.*`` / ``.1.*``  ``encoder.match_heads.{j}.conv1.*`` / ``bn1.*``
``encoder.prop{i}.3.*`` / ``.4.*``  ``encoder.match_heads.{j}.conv2.*`` / ``bn2.*``
``decoder.clstm_list.{k}.Gates.*``  ``decoder.cells.{k}.gates.*``
``decoder.conv_out.*``              ``decoder.conv_out.*``
=================================== ==========================================

The import is strict: any original key that maps to nothing (and is not ignored), any
parameter of the model left without a value, and any shape mismatch raise one
``ValueError`` listing them. Only BatchNorm's ``num_batches_tracked`` may be absent
(checkpoints from before PyTorch 0.4.1 lack it; it is unused at inference).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from dmm_deploy.model.config import DMMConfig
from dmm_deploy.model.net import DMMNet

__all__ = [
    "OriginalCompatWarning",
    "convert_original_state_dict",
    "load_original_checkpoint",
    "original_key_map",
    "read_original_checkpoint",
    "torch_load_reason",
]


class OriginalCompatWarning(UserWarning):
    """Original weights loaded into a model that does not run the original's pipeline."""


_compat_warned = False  # load_original_checkpoint warns once per process

_IGNORED = (re.compile(r"^encoder\.base\.fc\.(weight|bias)$"),)
_MATCH_HEAD = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}


def original_key_map(model_keys: list[str]) -> dict[str, str]:
    """The table original-name -> our-name for the given ``DMMNet`` state-dict keys.

    Original names carry the ``encoder.``/``decoder.`` prefix of the ``Trainer`` and no
    ``module.``. Every key of ``model_keys`` appears exactly once as a value.
    """
    table: dict[str, str] = {}
    for key in model_keys:
        orig = _to_original(key)
        if orig is None:
            raise ValueError(f"no original name for model key {key!r}")
        table[orig] = key
    return table


def _to_original(key: str) -> str | None:
    parts = key.split(".")
    if parts[0] == "encoder":
        if parts[1] == "backbone":
            return "encoder.base." + ".".join(parts[2:])
        if parts[1] == "skip_heads":
            level = int(parts[2]) + 2
            kind = {"conv": "sk", "bn": "bn"}[parts[3]]
            return f"encoder.{kind}{level}." + ".".join(parts[4:])
        if parts[1] == "match_heads":
            level = int(parts[2]) + 2
            index = {v: k for k, v in _MATCH_HEAD.items()}[parts[3]]
            return f"encoder.prop{level}.{index}." + ".".join(parts[4:])
    if parts[0] == "decoder":
        if parts[1] == "cells":
            return f"decoder.clstm_list.{parts[2]}.Gates." + ".".join(parts[4:])
        if parts[1] == "conv_out":
            return key
    return None


def torch_load_reason(e: BaseException) -> str:
    """Why a ``torch.load(..., weights_only=True)`` failed, in one short line: torch's own
    message for it is a paragraph about re-running with ``weights_only=False``, which this
    project never does (it would run code from the file)."""
    text = str(e)
    if "Weights only load failed" not in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return (lines[0] if lines else type(e).__name__)[:240]
    found = re.search(r"WeightsUnpickler error: *([^\n]*)", text)
    detail = found.group(1).strip() if found else ""
    if detail.startswith("Unsupported global"):
        return (
            "it holds Python objects besides tensors, which are not loaded (no code from a "
            "weights file is run): save a state dict (torch.save(model.state_dict(), path))"
        )
    return "not a PyTorch weights file" + (f" ({detail[:120]})" if detail else "")


def _strip_module(key: str) -> str:
    return ".".join(p for p in key.split(".") if p != "module")


def read_original_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an original checkpoint into one state dict with ``encoder.``/``decoder.`` keys.

    path: a checkpoint directory holding ``trainer.pt`` (or ``encoder.pt`` and
    ``decoder.pt``), or the ``trainer.pt`` file itself. Loaded with ``weights_only=True``.
    """
    path = Path(path)

    def load(p: Path) -> dict:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read checkpoint file {p}: {torch_load_reason(e)}") from e
        if not isinstance(sd, Mapping):
            raise ValueError(f"checkpoint file {p} does not hold a state dict")
        return dict(sd)

    if path.is_file():
        return load(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if (path / "trainer.pt").is_file():
        return load(path / "trainer.pt")
    if (path / "encoder.pt").is_file() and (path / "decoder.pt").is_file():
        enc = load(path / "encoder.pt")
        dec = load(path / "decoder.pt")
        out = {"encoder." + _strip_module(k): v for k, v in enc.items()}
        out.update({"decoder." + _strip_module(k): v for k, v in dec.items()})
        return out
    raise FileNotFoundError(f"no trainer.pt (or encoder.pt + decoder.pt) in checkpoint dir {path}")


def convert_original_state_dict(
    state: Mapping[str, torch.Tensor], cfg: DMMConfig, reference: DMMNet | None = None
) -> dict[str, torch.Tensor]:
    """Original ``Trainer`` state dict -> a ``DMMNet`` state dict, strictly.

    state: keys ``encoder.*``/``decoder.*`` (``module.`` anywhere is dropped).
    cfg: the configuration of the target model (backbone and hidden size must match the
        checkpoint's).
    reference: a model of that configuration to take names and shapes from (built when
        ``None``).
    Raises ``ValueError`` listing unmapped keys, missing parameters and shape mismatches.
    """
    ref = DMMNet(cfg) if reference is None else reference
    target = ref.state_dict()
    table = original_key_map(list(target))
    out: dict[str, torch.Tensor] = {}
    unmapped, mismatched = [], []
    for raw_key, value in state.items():
        key = _strip_module(raw_key)
        if any(p.match(key) for p in _IGNORED):
            continue
        ours = table.get(key)
        if ours is None:
            unmapped.append(raw_key)
            continue
        if not isinstance(value, torch.Tensor) or value.shape != target[ours].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            mismatched.append(f"{raw_key}: {shape} vs {tuple(target[ours].shape)} for {ours}")
            continue
        out[ours] = value
    missing = []
    for key, value in target.items():
        if key not in out:
            if key.endswith("num_batches_tracked"):
                out[key] = value.clone()
            else:
                missing.append(f"{key} (original {_to_original(key)})")
    problems = []
    for title, items in (
        ("unmapped original keys", unmapped),
        ("model parameters without a value", missing),
        ("shape mismatches", mismatched),
    ):
        if items:
            shown = ", ".join(items[:8]) + (
                f", ... ({len(items)} in all)" if len(items) > 8 else ""
            )
            problems.append(f"{title}: {shown}")
    if problems:
        raise ValueError(
            f"checkpoint does not fit DMMNet(backbone={cfg.backbone!r}, "
            f"hidden_size={cfg.hidden_size}): " + "; ".join(problems)
        )
    return out


def load_original_checkpoint(
    model: DMMNet, source: str | os.PathLike | Mapping[str, torch.Tensor]
) -> DMMNet:
    """Load an original DMM-Net checkpoint into ``model`` (in place; returns it).

    source: a checkpoint directory or ``trainer.pt`` path (see
    :func:`read_original_checkpoint`), or an already loaded state dict with
    ``encoder.``/``decoder.`` keys. Strict (see :func:`convert_original_state_dict`).

    The released weights were evaluated with the original's test-time pipeline; when
    ``model.cfg.compat`` is not ``"original"`` an :class:`OriginalCompatWarning` is issued
    (once per process, through :func:`warnings.warn`).
    """
    global _compat_warned
    if not isinstance(model, DMMNet):
        raise TypeError(f"model must be a DMMNet, got {type(model).__name__}")
    state = source if isinstance(source, Mapping) else read_original_checkpoint(source)
    converted = convert_original_state_dict(state, model.cfg, reference=model)
    model.load_state_dict(converted, strict=True)
    if model.cfg.compat != "original" and not _compat_warned:
        _compat_warned = True
        warnings.warn(
            f"original DMM-Net weights loaded into a model with compat={model.cfg.compat!r}: "
            "they were evaluated with the original pipeline; use "
            "DMMConfig(compat='original') to reproduce it",
            OriginalCompatWarning,
            stacklevel=2,
        )
    return model
