"""dmm-deploy: deployment stack for DMM-Net (differentiable mask matching for video object segmentation).

Importing ``dmm_deploy`` is light: it does not import torch. The matcher API below is loaded on
first use (``dmm_deploy.dmm_match(...)`` or ``from dmm_deploy import dmm_match``), so the
torch-free parts (``dmm_deploy.runtime``, ``dmm_deploy.data``, ``dmm_deploy.eval``, the CLI's
argument parsing) work in an environment without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it (imported on first access)
_LAZY = {
    "DMMMatcher": "dmm_deploy.matching",
    "MatchInfo": "dmm_deploy.matching",
    "dmm_match": "dmm_deploy.matching",
    "exact_assign": "dmm_deploy.matching",
    "greedy_init": "dmm_deploy.matching",
    "hard_assign": "dmm_deploy.matching",
}

__all__ = [
    "DMMMatcher",
    "MatchInfo",
    "__version__",
    "dmm_match",
    "exact_assign",
    "greedy_init",
    "hard_assign",
]

if TYPE_CHECKING:  # for type checkers and IDEs only; never executed
    from dmm_deploy.matching import (
        DMMMatcher,
        MatchInfo,
        dmm_match,
        exact_assign,
        greedy_init,
        hard_assign,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dmm_deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
