"""Reference Gaussian filtering in feature space: the exact sum and the
permutohedral lattice, in plain PyTorch (any device).

The filter is ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` over every pixel
``j`` of the same image, ``i`` included, for features ``f`` already divided
by their standard deviations.

``exact_gaussian_filter`` computes that sum directly, O(N^2), in chunks of
rows so it never holds an N x N matrix: the ground truth for small images.

The lattice (Adams, Baek & Davis, "Fast High-Dimensional Filtering Using
the Permutohedral Lattice", Eurographics 2010) approximates it in O(N d^2):
each feature vector is lifted onto the hyperplane ``x . 1 = 0`` of R^(d+1),
found inside one simplex of the permutohedral lattice (section 3.1),
splatted onto the simplex's d+1 corners with its barycentric weights, the
lattice is blurred with [1/4 1/2 1/4] along each of its d+1 directions, and
the result is sliced back with the same weights. Everything but the values
depends on the features alone: ``build_lattice`` computes it once and
``apply_lattice`` filters any number of value channels with it, as often as
needed (a dense CRF does so every iteration).

The lattice is a plain set of tensors (``LatticeTensors``) whose format is
shared by every backend, so a lattice built by one can be applied by
another; see ``fastseg.ops.permutohedral_filter`` for the format.
"""

import math
from typing import NamedTuple

import torch


class LatticeTensors(NamedTuple):
    """A lattice over a batch of B images of N pixels with d features.

    Vertices are numbered over the whole batch (no image shares a vertex
    with another); M is their count.
    """

    vertex_of: torch.Tensor  # int32 [B, N, d+1]: the vertex of each corner of each pixel's simplex
    barycentric: torch.Tensor  # float [B, N, d+1]: each corner's weight; a pixel's weights sum to 1
    neighbors: torch.Tensor  # int32 [d+1, M, 2]: per direction, the vertex before and after (-1: none)
    splat_order: torch.Tensor  # int32 [B*N*(d+1)]: flat corner indices sorted by vertex, stably
    vertex_start: torch.Tensor  # int32 [M+1]: corners of vertex v are splat_order[vertex_start[v]:vertex_start[v+1]]


def repeat_lattice(lattice: LatticeTensors, copies: int) -> LatticeTensors:
    """The lattice of ``copies`` batches of the same features, one after
    another, from the lattice of one: copy k's vertices and corners are
    numbered after copy k-1's, as building it from the repeated features
    numbers them (images share no vertex), but without the build. The
    caller keeps B * copies * N * (d+1) within int32."""
    if copies == 1:
        return lattice
    batch, pixels, corners = lattice.vertex_of.shape
    vertices, total = lattice.neighbors.shape[1], batch * pixels * corners
    copy = torch.arange(copies, dtype=torch.int32, device=lattice.vertex_of.device)
    vertex_shift, corner_shift = copy * vertices, copy * total
    neighbors = lattice.neighbors.unsqueeze(1)  # [d+1, 1, M, 2]
    neighbors = torch.where(neighbors < 0, neighbors, neighbors + vertex_shift.view(1, -1, 1, 1))  # -1: none
    vertex_start = (lattice.vertex_start[:-1] + corner_shift.view(-1, 1)).reshape(-1)
    return LatticeTensors(
        vertex_of=(lattice.vertex_of + vertex_shift.view(-1, 1, 1, 1)).reshape(copies * batch, pixels, corners),
        barycentric=lattice.barycentric.repeat(copies, 1, 1),
        neighbors=neighbors.reshape(corners, copies * vertices, 2),
        splat_order=(lattice.splat_order + corner_shift.view(-1, 1)).reshape(-1),
        vertex_start=torch.cat([vertex_start, vertex_start.new_tensor([copies * total])]),
    )


def exact_gaussian_filter(values: torch.Tensor, features: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` computed exactly, per image.

    values [B, N, C], features [B, N, d] -> [B, N, C], in float64.
    """
    values, features = values.double(), features.double()
    out = torch.empty_like(values)
    for start in range(0, features.shape[1], chunk):
        rows = features[:, start:start + chunk]  # [B, n, d]
        weights = torch.exp(-0.5 * torch.cdist(rows, features).square())  # [B, n, N]
        out[:, start:start + chunk] = weights @ values
    return out


def lattice_scale(d: int) -> float:
    """The factor that turns the lattice's mass-preserving blur into the
    unnormalised Gaussian sum.

    Splat, blur and slice preserve mass, so on a lattice vertex they spread
    what the pixels of its cell hold. A cell of the lattice below covers
    (3/2)^(d/2) / sqrt(d+1) units of feature volume (the lattice (d+1) A_d*,
    covolume (d+1)^(d-1/2), shrunk by the embedding's scale sqrt(2/3)(d+1)),
    and a unit Gaussian integrates to (2 pi)^(d/2), hence the ratio.
    """
    return (4.0 * math.pi / 3.0) ** (d / 2) * math.sqrt(d + 1)


def elevation_matrix(d: int, dtype: torch.dtype, device) -> torch.Tensor:
    """[d+1, d]: lifts features onto the hyperplane ``x . 1 = 0``.

    Column j is (1, ..., 1, -(j+1), 0, ..., 0) (j+1 ones) divided by its
    norm sqrt((j+1)(j+2)): the columns are orthonormal, so distances are
    kept, times sqrt(2/3)(d+1), which makes the lattice's blur a unit
    Gaussian (Adams et al. 2010, section 3.1).
    """
    elevation = torch.zeros(d + 1, d, dtype=torch.float64)
    for j in range(d):
        elevation[: j + 1, j] = 1.0
        elevation[j + 1, j] = -(j + 1)
        elevation[:, j] /= math.sqrt((j + 1) * (j + 2))
    return (elevation * math.sqrt(2.0 / 3.0) * (d + 1)).to(dtype=dtype, device=device)


def _enclosing_simplex(elevated: torch.Tensor):
    """The remainder-0 vertex, the rank of each coordinate and the
    barycentric weights of the simplex holding each point (section 3.1)."""
    # elevated: [P, d+1]
    d = elevated.shape[-1] - 1
    scaled = elevated / (d + 1)
    up, down = torch.ceil(scaled) * (d + 1), torch.floor(scaled) * (d + 1)
    rem0 = torch.where(up - elevated < elevated - down, up, down)  # nearest multiple of d+1
    offset = elevated - rem0
    # rank[i]: how many coordinates lie further above their rem0 than i does
    # (ties go to the lower index, as in Adams' code, so ranks are a permutation).
    index = torch.arange(d + 1, device=elevated.device)
    greater = offset.unsqueeze(-2) > offset.unsqueeze(-1)  # [P, i, j]: offset[j] > offset[i]
    equal_before = (offset.unsqueeze(-2) == offset.unsqueeze(-1)) & (index < index.unsqueeze(-1))
    rank = (greater | equal_before).sum(-1)
    # rem0 need not lie on the hyperplane: walk it back, adjusting the ranks.
    excess = torch.round(rem0.sum(-1, keepdim=True) / (d + 1)).long()
    rank = rank + excess
    rem0 = rem0 + (d + 1) * ((rank < 0).to(rem0.dtype) - (rank > d).to(rem0.dtype))
    rank = torch.remainder(rank, d + 1)
    offset = (elevated - rem0) / (d + 1)
    barycentric = torch.zeros(elevated.shape[0], d + 2, dtype=elevated.dtype, device=elevated.device)
    barycentric.scatter_add_(1, d - rank, offset)
    barycentric.scatter_add_(1, d - rank + 1, -offset)
    barycentric[:, 0] += 1.0 + barycentric[:, d + 1]
    return rem0.long(), rank, barycentric[:, : d + 1]


def _corner_keys(rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Integer coordinates of the d+1 corners of each simplex: corner r adds
    r to the coordinates of rank <= d - r and r - (d+1) to the others."""
    # rem0, rank: [P, d+1] -> [P, d+1 (corner), d+1 (coordinate)]
    d = rem0.shape[-1] - 1
    corner = torch.arange(d + 1, device=rem0.device).view(1, d + 1, 1)
    shift = torch.where(rank.unsqueeze(1) <= d - corner, corner, corner - (d + 1))
    return rem0.unsqueeze(1) + shift


def _row_codes(rows: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor | None:
    """One int64 per integer row of ``rows`` [K, c] (column i within
    [low_i, high_i]) that sorts as the rows do lexicographically: the rows
    as digits of a mixed-radix number. None where that needs over 62 bits."""
    radix = (high - low + 1).tolist()
    if math.prod(radix) >= 2**62:
        return None
    strides = [math.prod(radix[i + 1:]) for i in range(len(radix))]
    return ((rows - low) * torch.tensor(strides, device=rows.device)).sum(1)


def _number_vertices(keys: torch.Tensor, neighbor_steps: torch.Tensor):
    """Number the distinct rows of ``keys`` [K, c] in lexicographic order
    and find each one's neighbours ``key +- step`` for the steps [S, c].
    Returns (number of each key [K], neighbours [S, M, 2], -1 where absent).

    Rows coded as single integers sort and search fast; the exact
    row-wise unique is the fallback where the codes would not fit."""
    margin = neighbor_steps.abs().amax(0)
    low, high = keys.amin(0) - margin, keys.amax(0) + margin
    codes = _row_codes(keys, low, high)
    if codes is None:
        vertex_keys, vertex_of = torch.unique(keys, dim=0, return_inverse=True)
    else:
        vertex_codes, vertex_of = torch.unique(codes, return_inverse=True)
        vertex_keys = torch.zeros(vertex_codes.shape[0], keys.shape[1], dtype=keys.dtype, device=keys.device)
        vertex_keys[vertex_of] = keys  # every copy of a key writes the same row
    steps = neighbor_steps.unsqueeze(1)
    candidates = torch.stack([vertex_keys + steps, vertex_keys - steps], dim=2)  # [S, M, 2, c]
    flat = candidates.reshape(-1, keys.shape[1])
    if codes is None:
        everything, found = torch.unique(torch.cat([vertex_keys, flat]), dim=0, return_inverse=True)
        index_of = torch.full((everything.shape[0],), -1, dtype=torch.long, device=keys.device)
        index_of[found[: vertex_keys.shape[0]]] = torch.arange(vertex_keys.shape[0], device=keys.device)
        neighbors = index_of[found[vertex_keys.shape[0]:]]
    else:
        wanted = _row_codes(flat, low, high)
        position = torch.searchsorted(vertex_codes, wanted).clamp(max=vertex_codes.shape[0] - 1)
        neighbors = torch.where(vertex_codes[position] == wanted, position, -1)
    return vertex_of, neighbors.view(candidates.shape[:3])


def build_lattice(features: torch.Tensor) -> LatticeTensors:
    """The lattice of a batch of feature maps. features [B, N, d] (float32
    or float64, the precision of the barycentric weights)."""
    batch, pixels, d = features.shape
    device = features.device
    elevated = features.reshape(-1, d) @ elevation_matrix(d, features.dtype, device).T  # [B*N, d+1]
    rem0, rank, barycentric = _enclosing_simplex(elevated)
    keys = _corner_keys(rem0, rank)  # [B*N, d+1, d+1]
    # The image index leads each key: images never share vertices. The last
    # coordinate follows from the others (they sum to 0) and is dropped.
    image = torch.arange(batch, device=device).repeat_interleave(pixels * (d + 1)).unsqueeze(1)
    keys = torch.cat([image, keys[..., :d].reshape(-1, d)], dim=1)  # [B*N*(d+1), d+1]
    # Neighbours along direction j differ by -1 in every coordinate but j,
    # which differs by +d (the last, implicit coordinate is direction d).
    step = torch.full((d + 1, d), -1, dtype=torch.long, device=device)
    step[torch.arange(d), torch.arange(d)] = d
    step = torch.cat([torch.zeros(d + 1, 1, dtype=torch.long, device=device), step], dim=1)  # image unchanged
    vertex_of, neighbors = _number_vertices(keys, step)
    vertices = neighbors.shape[1]

    splat_order = torch.sort(vertex_of, stable=True).indices
    vertex_start = torch.zeros(vertices + 1, dtype=torch.long, device=device)
    vertex_start[1:] = torch.cumsum(torch.bincount(vertex_of, minlength=vertices), 0)
    return LatticeTensors(
        vertex_of=vertex_of.view(batch, pixels, d + 1).int(),
        barycentric=barycentric.reshape(batch, pixels, d + 1).contiguous(),  # a slice of d+2 columns
        neighbors=neighbors.int(),
        splat_order=splat_order.int(),
        vertex_start=vertex_start.int(),
    )


def apply_lattice(values: torch.Tensor, lattice: LatticeTensors, reverse: bool = False) -> torch.Tensor:
    """Splat, blur, slice: values [B, N, C] -> [B, N, C].

    ``reverse`` blurs the directions in the opposite order, which makes it
    the adjoint of the forward filter (each direction's blur is symmetric,
    their product on a sparse lattice is not quite).
    """
    batch, pixels, channels = values.shape
    d = lattice.vertex_of.shape[-1] - 1
    vertex_of = lattice.vertex_of.reshape(-1).long()
    weights = lattice.barycentric.reshape(batch * pixels, d + 1, 1).to(values.dtype)
    vertices = lattice.neighbors.shape[1]
    # Splat: each pixel's values onto its simplex's corners.
    corner_values = (weights * values.reshape(batch * pixels, 1, channels)).reshape(-1, channels)
    lattice_values = values.new_zeros(vertices, channels).index_add_(0, vertex_of, corner_values)
    # Blur: an extra zero row stands for absent neighbours (index -1).
    for direction in (reversed(range(d + 1)) if reverse else range(d + 1)):
        padded = torch.cat([values.new_zeros(1, channels), lattice_values])
        before, after = (lattice.neighbors[direction].long() + 1).unbind(1)
        lattice_values = 0.5 * lattice_values + 0.25 * (padded[before] + padded[after])
    # Slice: back to the pixels with the same weights.
    sliced = (weights * lattice_values[vertex_of].view(batch * pixels, d + 1, channels)).sum(1)
    return (lattice_scale(d) * sliced).view(batch, pixels, channels)


def permutohedral_filter(values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Same signature as ``fastseg.ops.permutohedral_filter``: values
    [B, C, *spatial], features [B, d, *spatial] -> [B, C, *spatial]."""
    batch, channels = values.shape[:2]
    d = features.shape[1]
    compute = torch.float64 if features.dtype == torch.float64 else torch.float32
    flat_features = features.reshape(batch, d, -1).transpose(1, 2).to(compute).contiguous()
    flat_values = values.reshape(batch, channels, -1).transpose(1, 2).to(compute)
    out = apply_lattice(flat_values, build_lattice(flat_features))
    return out.transpose(1, 2).reshape(values.shape).to(values.dtype)
