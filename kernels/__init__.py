"""Triton kernels of the DMM matcher (fused forward and backward, one launch per batch).

:mod:`kernels.matcher` holds the kernels, their launch wrappers (``matcher_forward``,
``matcher_backward``), block-size heuristics and ahead-of-time PTX compilation
(``compile_forward_ptx``, ``compile_backward_ptx``). This package imports nothing of
``dmm_deploy``; the public, differentiable entry point is
``dmm_deploy.matching.dmm_match(..., backend="triton")``.
"""
