"""A data loader for image sets that fit in memory (CIFAR, synthetic).

Batches are cut from one uint8 tensor and augmented as a whole batch, so two
CPU cores spend their time in the model, not in per-image PIL calls or worker
processes. All randomness of an epoch (order, crop offsets, flips) is drawn up
front from the loader's own `torch.Generator`; its state at an epoch boundary
is therefore all a checkpoint needs to continue exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from prunelab.data.augment import (
    crop_flip,
    cutout,
    cutout_size,
    draw_crop_flip,
    draw_cutout,
    norm_constants,
    normalize,
    resize,
)
from prunelab.errors import ConfigError, CorruptFileError


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_positions(n: int, rank: int, world: int, even: bool, drop_last: bool) -> torch.Tensor:
    """Positions in an epoch's order of length `n` that `rank` of `world` processes sees.

    Rank r takes positions r, r+world, r+2*world, ... (like DistributedSampler), so
    batch k of all ranks together is exactly positions k*B*world ... (k+1)*B*world
    of the shared order: a 2-process run with batch B sees the same samples per
    step as one process with batch 2B. `even` makes every rank see the same
    count (needed in training, where DDP expects equal step counts) by dropping
    the tail (`drop_last`) or wrapping around to the start; evaluation shards
    are not padded so that summed metrics count each sample once.
    """
    pos = torch.arange(n)
    if world > 1 and even:
        if drop_last:
            pos = pos[: (n // world) * world]
        else:
            total = -(-n // world) * world
            pos = torch.cat([pos, pos[: total - n]]) if total > n else pos
            while pos.numel() < total:  # fewer samples than ranks
                pos = torch.cat([pos, pos[: total - pos.numel()]])
    return pos[rank::world]


def check_loader_args(n: int, n_labels: int, batch_size: int, what: str,
                      labels: str = "labels") -> None:
    """The checks every in-memory loader makes of its samples, labels and batch size."""
    if n_labels != n:
        raise ConfigError(f"{n} {what} but {n_labels} {labels}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


class GeneratorState:
    """Checkpoint state of a loader whose epochs are drawn from its own generator."""

    state_kind: str = ""
    epoch: int
    seed: int
    generator: torch.Generator

    def state_dict(self) -> dict[str, Any]:
        """Epoch count and generator state: enough to replay the next epochs exactly."""
        return {"kind": self.state_kind, "epoch": self.epoch, "seed": self.seed,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.epoch = int(state["epoch"])
            self.generator.set_state(state["generator"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise CorruptFileError(f"data loader state is not a {type(self).__name__} state: "
                                   f"{exc}") from exc


class ShardedBatches:
    """Epoch order and length under sharding, shared by the in-memory loaders.

    Subclasses provide `num_samples`, `batch_size`, `shuffle`, `drop_last`, `shard`,
    `indices` (a subset, or None), `epoch` and `generator`.
    """

    num_samples: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    indices: torch.Tensor | None
    epoch: int
    generator: torch.Generator
    shard: bool = True

    def _init_order(self, batch_size: int, indices: torch.Tensor | None, shuffle: bool,
                    drop_last: bool, seed: int) -> None:
        """The fields `_epoch_order` reads, set the one way every in-memory loader sets them."""
        self.indices = None if indices is None else indices.long().cpu()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(seed)

    def _epoch_order(self, draw: Callable[[int], dict[str, torch.Tensor]] | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """This rank's sample order for the next epoch, its per-sample draws, and the stop.

        The order and then `draw(n)` (augmentation parameters, one row per sample)
        are taken from the generator for the whole split before sharding, so all
        ranks consume the same random stream and a saved generator state replays
        the epoch. Returns (sample indices, draws aligned with them, end of the
        last batch).
        """
        n = self.num_samples
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        draws = draw(n) if draw is not None else {}
        self.epoch += 1
        pos = self._my_positions()
        order = order[pos]
        draws = {k: v[pos] for k, v in draws.items()}
        if self.indices is not None:
            order = self.indices[order]
        bs = self.batch_size
        stop = (order.numel() // bs) * bs if self.drop_last else order.numel()
        return order, draws, stop

    def _rank_world(self) -> tuple[int, int]:
        return dist_rank_world() if self.shard else (0, 1)

    def _my_positions(self) -> torch.Tensor:
        rank, world = self._rank_world()
        return shard_positions(self.num_samples, rank, world, even=self.shuffle,
                               drop_last=self.drop_last)

    def __len__(self) -> int:
        n = self._my_positions().numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class TensorLoader(GeneratorState, ShardedBatches):
    """Iterates (float images, int64 labels) batches from in-memory uint8 images.

    images: (N, C, H, W) uint8; labels: (N,) int64; `indices` restricts the
    loader to a subset (a hold-out split shares the storage of the training set).
    Training loaders use `augment=True` (pad-`pad` random crop + horizontal flip,
    plus a `cutout` x `cutout` erased square when cutout > 0) and `shuffle=True`.
    `resolution` bilinearly resizes every batch. When
    torch.distributed is initialised, each rank iterates its own shard of the
    epoch's shared permutation (`shard=False` turns that off).
    """

    state_kind = "tensor"

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        indices: torch.Tensor | None = None,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        pad: int = 4,
        flip: bool = True,
        cutout: int = 0,
        resolution: int | None = None,
        seed: int = 0,
        shard: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} "
                              f"{tuple(images.shape)}")
        check_loader_args(images.shape[0], labels.shape[0], batch_size, "images")
        self.images = images
        self.labels = labels.long()
        self._init_order(batch_size, indices, shuffle, drop_last, seed)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.cutout = cutout_size(cutout)
        self.resolution = resolution
        self.shard = shard

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        """Samples in the whole split (all ranks together)."""
        return self.images.shape[0] if self.indices is None else self.indices.numel()

    @property
    def device(self) -> torch.device:
        return self.images.device

    # -------------------------------------------------------------- iteration
    def _draw_augment(self, n: int) -> dict[str, torch.Tensor]:
        if not self.augment:
            return {}
        oy, ox, fl = draw_crop_flip(n, self.pad, self.flip, self.generator)
        draws = {"oy": oy, "ox": ox, "fl": fl}
        if self.cutout > 0:  # drawn only when on, so runs without cutout keep their stream
            draws["cy"], draws["cx"] = draw_cutout(n, self.images.shape[2],
                                                   self.images.shape[3], self.generator)
        return draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, draws, stop = self._epoch_order(self._draw_augment)
        bs = self.batch_size
        dev = self.images.device
        order_dev = order.to(dev)
        # one host-to-device copy per epoch, not per batch
        d = {k: v.to(dev) for k, v in draws.items()}
        norm = norm_constants(self.mean, self.std, dev)
        for start in range(0, stop, bs):
            idx = order_dev[start:start + bs]
            sl = slice(start, start + bs)
            x = self.images.index_select(0, idx)
            if "oy" in d:
                x = crop_flip(x, d["oy"][sl], d["ox"][sl], d["fl"][sl], self.pad)
            x = normalize(x, *norm)
            if "cy" in d:
                x = cutout(x, d["cy"][sl], d["cx"][sl], self.cutout)
            x = resize(x, self.resolution)
            yield x, self.labels.index_select(0, idx)

    # ------------------------------------------------------------ state, misc
    def to(self, device: torch.device | str, memo: dict[int, torch.Tensor] | None = None
           ) -> TensorLoader:
        """Keep the images on `device` so batches are cut and augmented there.

        Loaders that share storage (train and hold-out) keep sharing it when the
        same `memo` dict is passed to each (DataBundle.to does that).
        """
        memo = {} if memo is None else memo
        for name in ("images", "labels"):
            t = getattr(self, name)
            if id(t) not in memo:
                memo[id(t)] = t.to(device)
            setattr(self, name, memo[id(t)])
        return self

    def set_epoch(self, epoch: int) -> None:
        """Only records the epoch; order comes from the generator (see state_dict)."""
        self.epoch = epoch

