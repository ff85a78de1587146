"""Launch configuration and matmul precision shared by the convolution
kernels.

Autotuning is keyed on the shapes that change the best tile and cached on
disk (``cache_results``), so a process pays for it once per shape. Under
Triton's interpreter timings mean nothing and every config computes the
same result, so one small config stands in for them.
"""

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreting as interpreting

# The smallest tile tl.dot takes (16 along each dimension), for the interpreter.
GEMM_INTERPRETER = triton.Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16})
# Pixels per slice of a split reduction are a whole number of these: a
# multiple of every BLOCK_P of the weight-gradient configs, so the slicing
# (and the partial buffer) does not depend on the config autotuning picks.
PIXEL_GRAIN = 128


def autotune_configs(gpu_configs: list[triton.Config], interpreter_config: triton.Config) -> list[triton.Config]:
    return [interpreter_config] if interpreting() else gpu_configs


def gemm_configs(tiles) -> list[triton.Config]:
    """Configs of an [BLOCK_M, BLOCK_N] output tile reduced BLOCK_K at a
    time, from (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) tuples."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in tiles]


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


def reduction_slices(pixels: int, programs_per_slice: int, device: torch.device) -> int:
    """Pixels per slice of a split reduction: enough slices to fill the
    device, each a whole number of PIXEL_GRAIN pixels."""
    slices = min(triton.cdiv(programs_to_fill(device), programs_per_slice), triton.cdiv(pixels, 4 * PIXEL_GRAIN))
    slices = max(1, slices)
    return triton.cdiv(triton.cdiv(pixels, slices), PIXEL_GRAIN) * PIXEL_GRAIN
