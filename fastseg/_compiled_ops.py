"""The ops of the compiled extension (``torch.ops.fastseg_C``) behind the same
Python signatures as the Triton and reference backends; they serve both the
``cpp`` (CPU) and ``cuda`` backends, the dispatcher picking the kernel by
device."""

import torch

from ._extension import extension
from ._window import PoolWindow
from .reference.permutohedral_filter import LatticeTensors


def _ops():
    extension()  # registers torch.ops.fastseg_C on first use
    return torch.ops.fastseg_C


def unpool_forward(x: torch.Tensor, indices: torch.Tensor, window: PoolWindow,
                   out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _ops().max_unpool2d(x, indices, list(out_hw), *window.as_lists())


def unpool_backward(grad_output: torch.Tensor, indices: torch.Tensor, window: PoolWindow) -> torch.Tensor:
    return _ops().max_unpool2d_backward(grad_output, indices, *window.as_lists())


def build_lattice(features: torch.Tensor) -> LatticeTensors:
    return LatticeTensors(*_ops().permutohedral_lattice(features))


def apply_lattice(values: torch.Tensor, lattice: LatticeTensors, reverse: bool = False) -> torch.Tensor:
    return _ops().permutohedral_apply(values, *lattice, reverse)


def dense_crf_mean_field(scores: torch.Tensor, scores_are: str, vertex_of: list[torch.Tensor],
                         barycentric: list[torch.Tensor], neighbors: list[torch.Tensor],
                         splat_order: list[torch.Tensor], vertex_start: list[torch.Tensor],
                         compat: list[torch.Tensor], iterations: int) -> torch.Tensor:
    return _ops().dense_crf_mean_field(scores, scores_are, vertex_of, barycentric, neighbors, splat_order,
                                       vertex_start, compat, iterations)
