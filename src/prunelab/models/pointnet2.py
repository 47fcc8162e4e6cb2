"""PointNet++ classification with single-scale grouping (Qi et al., NeurIPS 2017), "SSG".

    points (B, 3, N)
      -> SA(512 centroids, r 0.2, 32 neighbours, MLP 64-64-128)
      -> SA(128 centroids, r 0.4, 64 neighbours, MLP 128-128-256)
      -> SA(all points, MLP 256-512-1024) -> global max-pool
      -> FC 512 -> FC 256 -> FC classes  (BN, ReLU, dropout 0.5 between)

A set-abstraction layer samples centroids by farthest-point sampling, groups
the points within a radius of each centroid (ball query), runs a shared MLP
(1x1 convolutions with batch norm: the prunable part) on every neighbour's
(relative coordinates, features) and max-pools over the neighbours. The
sampling and grouping ops (prunelab.layers.point_ops) are fx leaf functions
that the channel engine knows: indices carry no channels, gathers keep them.

Differences from the paper's code: the CUDA sampling/grouping kernels are torch
code with the same results (farthest-point sampling starts at point 0 as the
kernel does); `width` scales every MLP and FC width and `npoints`/`nsamples`/
`radii` may be changed for CPU-scale runs (the defaults are the paper's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from prunelab.layers.point_ops import ball_query, farthest_point_sample, gather_points, group_points
from prunelab.models.registry import register_model

# Leaves for torch.fx: traced as one call each, not looked into (they index, loop, sort).
for _name in ("farthest_point_sample", "ball_query", "gather_points", "group_points"):
    torch.fx.wrap(_name)


def _shared_mlp(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        in_channels = w
    return nn.Sequential(*layers)


class SetAbstraction(nn.Module):
    """Sample `npoint` centroids, group `nsample` neighbours within `radius`, MLP, max-pool.

    `npoint=None` groups all points around the origin (the last, global layer).
    Input features (B, C, N) may be None (the first layer sees coordinates only).
    """

    def __init__(self, npoint: int | None, radius: float, nsample: int, in_channels: int,
                 widths: Sequence[int]) -> None:
        super().__init__()
        self.npoint, self.radius, self.nsample = npoint, radius, nsample
        self.mlp = _shared_mlp(in_channels + 3, widths)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.npoint is None:
            grouped = xyz if features is None else torch.cat([xyz, features], dim=1)
            return None, self.mlp(grouped.unsqueeze(2)).amax(dim=-1)
        centres = gather_points(xyz, farthest_point_sample(xyz, self.npoint))
        idx = ball_query(xyz, centres, self.radius, self.nsample)
        grouped = group_points(xyz, idx) - centres.unsqueeze(-1)
        if features is not None:
            grouped = torch.cat([grouped, group_points(features, idx)], dim=1)
        return centres, self.mlp(grouped).amax(dim=-1)


def _fc(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features, bias=False),
                         nn.BatchNorm1d(out_features), nn.ReLU(), nn.Dropout(dropout))


class PointNet2SSG(nn.Module):
    """PointNet++ SSG classifier on (B, 3, N) points."""

    def __init__(
        self,
        num_classes: int = 40,
        width: float = 1.0,
        npoints: Sequence[int] = (512, 128),
        radii: Sequence[float] = (0.2, 0.4),
        nsamples: Sequence[int] = (32, 64),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(8, round(c * width))

        self.sa1 = SetAbstraction(npoints[0], radii[0], nsamples[0], 0, [w(64), w(64), w(128)])
        self.sa2 = SetAbstraction(npoints[1], radii[1], nsamples[1], w(128),
                                  [w(128), w(128), w(256)])
        self.sa3 = SetAbstraction(None, 0.0, 0, w(256), [w(256), w(512), w(1024)])
        self.head = nn.Sequential(_fc(w(1024), w(512), dropout), _fc(w(512), w(256), dropout),
                                  nn.Linear(w(256), num_classes))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        xyz, feats = self.sa1(points, None)
        xyz, feats = self.sa2(xyz, feats)
        _, feats = self.sa3(xyz, feats)
        return self.head(feats.flatten(1))


@register_model("pointnet2_ssg", input_size=(3, 1024), num_classes=40)  # type: ignore[arg-type]
def pointnet2_ssg(num_classes: int = 40, **kwargs: object) -> PointNet2SSG:
    """PointNet++ SSG (paper sizes); kwargs: width, npoints, radii, nsamples, dropout."""
    return PointNet2SSG(num_classes=num_classes, **kwargs)  # type: ignore[arg-type]
