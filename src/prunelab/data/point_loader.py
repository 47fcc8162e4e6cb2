"""Batches of point clouds from memory, with the PointNet++ training augmentation.

Clouds are held as one (N, P, 3) float tensor of centred, unit-sphere points;
batches come out as (B, 3, P), the layout point networks convolve over. The
augmentation is the one of the PointNet++ reference training script
(`provider.py` of charlesq34/pointnet2), applied per cloud:

- point dropout: drop each point with probability r ~ U(0, 0.875) (r drawn per
  cloud) by overwriting it with the cloud's first point, so every cloud keeps
  P points;
- random scale s ~ U(0.8, 1.25) and shift t ~ U(-0.1, 0.1) per axis;
- jitter: Gaussian noise of sigma 0.01 clipped to +-0.05 per coordinate.

All random numbers of an epoch come from the loader's own generator, drawn
up front, so a checkpoint of the generator state continues the run exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from prunelab.data.loader import GeneratorState, ShardedBatches, check_loader_args
from prunelab.errors import ConfigError


@dataclass(frozen=True)
class PointAugment:
    """Strength of each PointNet++ augmentation; 0 (or 1 for scales) turns one off."""

    max_dropout: float = 0.875
    scale_low: float = 0.8
    scale_high: float = 1.25
    shift: float = 0.1
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.05


def draw_point_augment(n: int, p: int, aug: PointAugment, gen: torch.Generator
                       ) -> dict[str, torch.Tensor]:
    """Random parameters of one epoch for `n` clouds of `p` points."""
    ratio = torch.rand(n, 1, generator=gen) * aug.max_dropout
    drop = torch.rand(n, p, generator=gen) <= ratio
    scale = torch.empty(n, 1, 3).uniform_(aug.scale_low, aug.scale_high, generator=gen)
    shift = torch.empty(n, 1, 3).uniform_(-aug.shift, aug.shift, generator=gen)
    noise = (torch.randn(n, p, 3, generator=gen) * aug.jitter_sigma).clamp_(
        -aug.jitter_clip, aug.jitter_clip)
    return {"drop": drop, "scale": scale, "shift": shift, "noise": noise}


def apply_point_augment(points: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Augment a (B, P, 3) batch with parameters from `draw_point_augment` (same rows)."""
    first = points[:, :1, :].expand_as(points)
    x = torch.where(params["drop"].unsqueeze(-1), first, points)
    return x * params["scale"] + params["shift"] + params["noise"]


class PointCloudLoader(GeneratorState, ShardedBatches):
    """Iterates ((B, 3, P) float points, (B,) int64 labels) from in-memory clouds.

    `indices` restricts the loader to a subset; under torch.distributed each
    rank takes its shard of the epoch's shared order (see `shard_positions`).
    """

    resolution: int | None = None  # images only; kept for the Loader protocol
    state_kind = "points"

    def __init__(
        self,
        points: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        indices: torch.Tensor | None = None,
        shuffle: bool = False,
        augment: PointAugment | None = None,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if points.dim() != 3 or points.shape[2] != 3 or not points.is_floating_point():
            raise ConfigError(f"points must be a float (N, P, 3) tensor, got {points.dtype} "
                              f"{tuple(points.shape)}")
        check_loader_args(points.shape[0], labels.shape[0], batch_size, "clouds")
        self.points = points
        self.labels = labels.long()
        self.augment = augment
        self._init_order(batch_size, indices, shuffle, drop_last, seed)

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return self.points.shape[0] if self.indices is None else self.indices.numel()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p = self.points.shape[1]
        draw = (lambda n: draw_point_augment(n, p, self.augment, self.generator)
                ) if self.augment else None
        order, params, stop = self._epoch_order(draw)
        params = {k: v.to(self.points.device) for k, v in params.items()}
        order_dev = order.to(self.points.device)
        bs = self.batch_size
        for start in range(0, stop, bs):
            idx = order_dev[start:start + bs]
            x = self.points.index_select(0, idx)
            if params:
                x = apply_point_augment(x, {k: v[start:start + bs] for k, v in params.items()})
            yield x.transpose(1, 2).contiguous(), self.labels.index_select(0, idx)

    def to(self, device: torch.device | str) -> PointCloudLoader:
        self.points = self.points.to(device)
        self.labels = self.labels.to(device)
        return self

