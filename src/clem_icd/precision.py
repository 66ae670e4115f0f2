"""Numeric precision: one rule for training and inference."""

from __future__ import annotations

import torch

from clem_icd.errors import ClemError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16(device_type: str) -> bool:
    """bf16 that runs natively: GPUs that have it, CPUs with AVX512-BF16 / AMX (there autocast
    roughly halves the time; emulated bf16 would be slower than fp32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def mixed_precision(requested: str) -> str:
    """Accelerate's mixed_precision value for a recipe's setting ('auto': bf16 where native)."""
    if requested != "auto":
        return requested
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if native_bf16(device) else "no"


def autocast_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for inference on `device`, or None for plain fp32."""
    requested = "fp32" if requested == "no" else requested  # the training recipes' spelling
    if requested not in PRECISIONS:
        raise ClemError(f"precision must be one of {', '.join(PRECISIONS)}, got '{requested}'")
    if requested == "auto":
        return torch.bfloat16 if native_bf16(device.type) else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
