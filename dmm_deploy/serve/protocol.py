"""The segmentation model's interface on the server: tensor names and its ``config.pbtxt``.

Per request (one frame of one stream; batch axis 1)::

    FRAME       UINT8 (1, H, W, 3)   RGB frame
    ANNOTATION  UINT8 (1, H, W)      optional: label map of new/re-annotated objects
                                     (required on a stream's first frame)
    DET_BOXES   FP32  (1, N, 4)      optional: this frame's detections (x1, y1, x2, y2 in
    DET_SCORES  FP32  (1, N)         frame pixels), scores, masks box-relative (1, N, M, M)
    DET_MASKS   FP32  (1, N, h, w)   or full-frame (1, N, H, W); required when the bundle
                                     has no proposals stage
    -> LABELS   UINT8 (1, H, W)      the frame's label map

The stream id is the request's **sequence id** (a string) and start/end are its sequence
flags; Triton's sequence batcher passes the flags to the model as the control inputs
``START``/``END`` and the id as the request's correlation id.
"""

from __future__ import annotations

FRAME, ANNOTATION, LABELS = "FRAME", "ANNOTATION", "LABELS"
DET_BOXES, DET_SCORES, DET_MASKS = "DET_BOXES", "DET_SCORES", "DET_MASKS"
START, END = "START", "END"
MODEL_NAME = "dmm_segment"

# name, Triton type, dims without the batch axis, optional
INPUTS = (
    (FRAME, "TYPE_UINT8", (-1, -1, 3), False),
    (ANNOTATION, "TYPE_UINT8", (-1, -1), True),
    (DET_BOXES, "TYPE_FP32", (-1, 4), True),
    (DET_SCORES, "TYPE_FP32", (-1,), True),
    (DET_MASKS, "TYPE_FP32", (-1, -1, -1), True),
)
OUTPUTS = ((LABELS, "TYPE_UINT8", (-1, -1)),)

__all__ = [
    "ANNOTATION",
    "DET_BOXES",
    "DET_MASKS",
    "DET_SCORES",
    "END",
    "FRAME",
    "INPUTS",
    "LABELS",
    "MODEL_NAME",
    "OUTPUTS",
    "START",
    "stream_model_config",
]


def _dims(d) -> str:
    return "[" + ", ".join(str(int(v)) for v in d) + "]"


def _params(params: dict[str, str]) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value {{ string_value: {_quote(v)} }} }}'
        for k, v in params.items()
    )


def _quote(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def stream_model_config(
    name: str,
    *,
    max_batch: int,
    max_streams: int,
    idle_timeout: float,
    queue_delay_ms: float,
    params: dict[str, str],
    kind: str = "KIND_CPU",
) -> str:
    """``config.pbtxt`` of the per-stream model: Python backend, sequence batcher (oldest
    strategy: at most one request per stream in a batch, streams kept in order on the one
    instance that holds their state), ragged inputs (streams of different frame sizes and
    detection counts batch together)."""
    inputs = ",\n".join(
        f'  {{ name: "{n}" data_type: {t} dims: {_dims(d)}'
        + (" optional: true" if opt else "")
        + " allow_ragged_batch: true }"
        for n, t, d, opt in INPUTS
    )
    outputs = ",\n".join(
        f'  {{ name: "{n}" data_type: {t} dims: {_dims(d)} }}' for n, t, d in OUTPUTS
    )
    # Triton keeps rejected and idle sequences in its candidate slots until they end or
    # expire: room for more than max_streams, so a refused stream cannot block a slot.
    candidates = 2 * max_streams + max_batch
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
{inputs}
]
output [
{outputs}
]
sequence_batching {{
  max_sequence_idle_microseconds: {int(idle_timeout * 1e6)}
  control_input [
    {{ name: "{START}" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }} ] }},
    {{ name: "{END}" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [0, 1] }} ] }}
  ]
  oldest {{
    max_candidate_sequences: {candidates}
    max_queue_delay_microseconds: {int(queue_delay_ms * 1000)}
  }}
}}
instance_group [ {{ kind: {kind} count: 1 }} ]
{_params(params)}
"""
