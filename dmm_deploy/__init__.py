"""dmm-deploy: deployment stack for DMM-Net (differentiable mask matching for video object segmentation)."""

from dmm_deploy.matching import (
    DMMMatcher,
    MatchInfo,
    dmm_match,
    exact_assign,
    greedy_init,
    hard_assign,
)

__version__ = "0.1.0"

__all__ = [
    "DMMMatcher",
    "MatchInfo",
    "__version__",
    "dmm_match",
    "exact_assign",
    "greedy_init",
    "hard_assign",
]
