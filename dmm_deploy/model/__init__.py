"""DMM-Net: encoder, proposals, box embeddings, matching cost, DMM layer, refinement decoder.

Stages (tensors in, tensors out; one frame, batch 1):

1. :class:`Encoder`: image ``(1, 3, h, w)`` in [0, 1] -> 4 matching + 4 skip feature maps.
2. :func:`prepare_proposals`: a :class:`ProposalSource`'s :class:`Detections` ->
   :class:`Proposals` (boxes ``(P, 4)``, masks ``(P, h, w)``, scores ``(P,)``).
3. :class:`RoIEmbedder`: features + boxes -> ``(N, 4 hidden)`` embeddings (templates too).
4. :class:`MatchingCost`: templates, embeddings, previous masks, proposal masks -> ``(O, P)``.
5. :func:`match_proposals`: padding, the DMM layer, the test-time read-out, matched masks.
6. :class:`RefineDecoder`: one ConvLSTM refinement step per object.

:class:`DMMNet` holds the stages, :class:`VideoSegmenter` runs them over a video, and
:func:`load_original_checkpoint` imports the original repository's weights.
"""

from dmm_deploy.model.checkpoint import (
    OriginalCompatWarning,
    convert_original_state_dict,
    load_original_checkpoint,
    original_key_map,
    read_original_checkpoint,
)
from dmm_deploy.model.config import (
    BACKBONES,
    COMPAT_FIXED,
    COMPAT_SWITCHES,
    COMPATS,
    MATCHINGS,
    DMMConfig,
)
from dmm_deploy.model.decoder import ConvLSTMCell, RefineDecoder, mask_pyramid, to_probabilities
from dmm_deploy.model.embed import RoIEmbedder, roi_align_mean, tight_boxes
from dmm_deploy.model.encoder import Encoder
from dmm_deploy.model.matching import (
    MatchingCost,
    MatchResult,
    exact_assignment,
    mask_iou,
    match_proposals,
    pad_proposals,
)
from dmm_deploy.model.net import (
    DMMNet,
    frame_to_input,
    merge_probabilities,
    pil_nearest_index,
    resize_labels,
    resize_masks,
)
from dmm_deploy.model.proposals import Detections, Proposals, paste_box_masks, prepare_proposals
from dmm_deploy.model.segmenter import VideoSegmenter
from dmm_deploy.model.sources import (
    MaskRCNNProposals,
    OracleProposals,
    PrecomputedProposals,
    ProposalSource,
    save_precomputed,
)

__all__ = [
    "BACKBONES",
    "COMPATS",
    "COMPAT_FIXED",
    "COMPAT_SWITCHES",
    "MATCHINGS",
    "ConvLSTMCell",
    "DMMConfig",
    "DMMNet",
    "Detections",
    "Encoder",
    "MaskRCNNProposals",
    "MatchResult",
    "MatchingCost",
    "OracleProposals",
    "OriginalCompatWarning",
    "PrecomputedProposals",
    "ProposalSource",
    "Proposals",
    "RefineDecoder",
    "RoIEmbedder",
    "VideoSegmenter",
    "convert_original_state_dict",
    "exact_assignment",
    "frame_to_input",
    "load_original_checkpoint",
    "mask_iou",
    "mask_pyramid",
    "match_proposals",
    "merge_probabilities",
    "original_key_map",
    "pad_proposals",
    "paste_box_masks",
    "pil_nearest_index",
    "prepare_proposals",
    "read_original_checkpoint",
    "resize_labels",
    "resize_masks",
    "roi_align_mean",
    "save_precomputed",
    "tight_boxes",
    "to_probabilities",
]
