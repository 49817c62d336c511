"""Triton kernels of the DMM matcher (fused forward and backward, one launch per batch)."""
