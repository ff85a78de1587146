"""Launch configuration and matmul precision shared by the convolution
kernels.

Autotuning is keyed on the shapes that change the best tile and cached on
disk (``cache_results``), so a process pays for it once per shape. Under
Triton's interpreter timings mean nothing and every config computes the
same result, so one small config stands in for them.
"""

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune_configs(gpu_configs: list[triton.Config], interpreter_config: triton.Config) -> list[triton.Config]:
    return [interpreter_config] if interpreting() else gpu_configs


def dot_dtype(dtype: torch.dtype):
    """The dtype tile products are formed in: the input's own (tensor cores
    take float16, bfloat16 and float32 as tf32). Triton's interpreter
    multiplies bfloat16 tiles wrongly (numpy has no bfloat16), so there the
    bfloat16 tiles go in as float32: the same products, which bfloat16
    times bfloat16 gives exactly in float32."""
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}[dtype]


def input_precision() -> str:
    """float32 convolutions use tf32 tensor cores exactly when PyTorch's own
    would (``torch.backends.cudnn.allow_tf32``, on by default)."""
    return "tf32" if torch.backends.cudnn.allow_tf32 and not interpreting() else "ieee"


def programs_to_fill(device: torch.device) -> int:
    """How many programs keep every SM of ``device`` busy (two waves)."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4
