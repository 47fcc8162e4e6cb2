"""Sampling and grouping ops of PointNet++ (Qi et al., NeurIPS 2017), in plain torch.

Tensors are channels-first like the networks that use them: coordinates
(B, 3, N), features (B, C, N). Sampling and grouping return *indices*
(int64, no channel axis); `gather_points` / `group_points` pick feature
columns by those indices and keep the channel axis where it was. That split
is what lets the channel engine treat them simply: index ops carry no
channels, gather ops pass the gathered tensor's channels through
(see prunelab.graph.op_tables).

The reference CUDA kernels are replaced by vectorised torch code with the
same results: farthest-point sampling starts from point 0 as the reference
kernel does, and a ball query takes the first `nsample` points (in index
order) within the radius, padding with the first one found.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Indices (B, npoint) of iteratively farthest points of `xyz` (B, 3, N), first = 0."""
    b, _, n = xyz.shape
    if npoint > n:
        raise ValueError(f"cannot sample {npoint} of {n} points")
    pts = xyz.transpose(1, 2)
    idx = torch.zeros(b, npoint, dtype=torch.long, device=xyz.device)
    nearest = torch.full((b, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    far = torch.zeros(b, dtype=torch.long, device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    for i in range(npoint):
        idx[:, i] = far
        centre = pts[rows, far].unsqueeze(1)  # (B, 1, 3)
        nearest = torch.minimum(nearest, ((pts - centre) ** 2).sum(-1))
        far = nearest.argmax(dim=1)
    return idx


@torch.no_grad()
def ball_query(xyz: torch.Tensor, centres: torch.Tensor, radius: float, nsample: int
               ) -> torch.Tensor:
    """Indices (B, S, nsample) of points of `xyz` (B, 3, N) within `radius` of each centre.

    `centres` (B, 3, S). Takes the first `nsample` points in index order and
    repeats the first one where fewer lie in the ball (a centre taken from
    `xyz` always finds itself).
    """
    n = xyz.shape[2]
    d2 = ((centres.unsqueeze(-1) - xyz.unsqueeze(2)) ** 2).sum(1)  # (B, S, N)
    order = torch.arange(n, device=xyz.device).expand_as(d2)
    candidates = torch.where(d2 > radius * radius, n, order)
    k = min(nsample, n)
    first = candidates.topk(k, dim=-1, largest=False, sorted=True).values
    if k < nsample:  # fewer points than nsample: pad with the first one
        first = torch.cat([first, first[..., :1].expand(*first.shape[:2], nsample - k)], -1)
    return torch.where(first == n, first[..., :1].expand_as(first), first)


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Columns `idx` (B, S) of `x` (B, C, N): (B, C, S)."""
    return x.gather(2, idx.unsqueeze(1).expand(-1, x.shape[1], -1))


def group_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Neighbourhoods `idx` (B, S, K) of `x` (B, C, N): (B, C, S, K)."""
    b, s, k = idx.shape
    flat = idx.reshape(b, 1, s * k).expand(-1, x.shape[1], -1)
    return x.gather(2, flat).view(b, x.shape[1], s, k)
