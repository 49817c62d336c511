"""The DMM matching layer: public API, batched PyTorch reference, discrete read-outs."""

from dmm_deploy.matching.api import BACKENDS, DMMMatcher, dmm_match, triton_available
from dmm_deploy.matching.assign import exact_assign, hard_assign
from dmm_deploy.matching.reference import VARIANTS, MatchInfo, greedy_init, match_reference

__all__ = [
    "BACKENDS",
    "VARIANTS",
    "DMMMatcher",
    "MatchInfo",
    "dmm_match",
    "exact_assign",
    "greedy_init",
    "hard_assign",
    "match_reference",
    "triton_available",
]
