"""Image-folder data sets too large for memory (ImageNet, Tiny-ImageNet).

`root/train/<class>/*` and `root/val/<class>/*` (or `root/test/...`) are
streamed by a torch DataLoader whose workers decode with PIL and apply the
standard ImageNet augmentation (random-resized crop + flip for training,
resize + centre crop for evaluation). Workers return uint8 tensors, a quarter
of the bytes of float; conversion, normalisation and the optional resolution
change happen on the batch in the main process, on the training device.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
)

from prunelab.data.augment import (
    cutout,
    cutout_size,
    draw_cutout,
    norm_constants,
    normalize,
    resize,
)
from prunelab.data.loader import dist_rank_world
from prunelab.errors import CorruptFileError, DataNotFoundError


class ShardSampler(Sampler[int]):
    """Rank r of w takes samples r, r+w, ...: no padding, so summed metrics count each once."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def imagenet_transforms(image_size: int = 224, resize_size: int | None = None) -> tuple[Any, Any]:
    """(train, eval) PIL -> uint8 tensor transforms: RRC+flip, and resize+centre crop.

    The eval resize defaults to image_size / 0.875 (256 for 224).
    """
    from torchvision import transforms as T

    if resize_size is None:
        resize_size = round(image_size / 0.875)
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.PILToTensor()])
    evaluate = T.Compose([T.Resize(resize_size), T.CenterCrop(image_size), T.PILToTensor()])
    return train, evaluate


def _find_split(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataNotFoundError(
        f"image folder not found: looked for {' or '.join(str(root / n) for n in names)} "
        f"(expected <split>/<class>/<image> folders)"
    )


def image_folder_splits(
    root: str | os.PathLike[str], image_size: int = 224, resize_size: int | None = None
) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any], list[str]]:
    """(train set, same files with eval transform, val set, class names).

    Scans `root/train` once; the eval-transform twin shares its file list, for
    a hold-out split that must not be augmented.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder root {root} does not exist")
    train_tf, eval_tf = imagenet_transforms(image_size, resize_size)
    train_dir = _find_split(root, ["train"])
    val_dir = _find_split(root, ["val", "test"])
    try:
        train = ImageFolder(str(train_dir), transform=train_tf)
        val = ImageFolder(str(val_dir), transform=eval_tf)
    except (FileNotFoundError, OSError) as exc:
        raise DataNotFoundError(f"cannot read image folder {root}: {exc}") from exc
    if val.classes != train.classes:
        extra = sorted(set(val.classes) - set(train.classes))
        raise CorruptFileError(
            f"{val_dir} class folders differ from {train_dir}"
            + (f" (not in train: {extra[:5]})" if extra else "")
        )
    train_eval = copy.copy(train)
    train_eval.transform = eval_tf
    return train, train_eval, val, list(train.classes)


class FolderLoader:
    """Streams batches of a map-style image Dataset through DataLoader workers.

    Same interface as TensorLoader: iterate (normalised float images, labels),
    `len()`, `batch_size`, `resolution`, `state_dict()`. A fresh DataLoader is
    made per epoch, seeded from (seed, epoch), so augmentation and order are
    reproducible and resume needs only the epoch number. Under torch.distributed,
    training uses DistributedSampler and evaluation an unpadded shard.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        drop_last: bool = False,
        resolution: int | None = None,
        seed: int = 0,
        workers: int | None = None,
        shard: bool = True,
        indices: Sequence[int] | None = None,
        cutout: int = 0,
    ) -> None:
        self.dataset: Dataset[Any] = dataset if indices is None else Subset(dataset, list(indices))
        self.batch_size = int(batch_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.resolution = resolution
        self.seed = seed
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.shard = shard
        self.epoch = 0
        self.target_device = torch.device("cpu")
        self.cutout = cutout_size(cutout)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return self.target_device

    def _sampler(self, epoch: int) -> Sampler[int]:
        rank, world = dist_rank_world() if self.shard else (0, 1)
        n = self.num_samples
        if world > 1 and self.shuffle:
            s = DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=True,
                                   seed=self.seed, drop_last=self.drop_last)
            s.set_epoch(epoch)
            return s
        if world > 1:
            return ShardSampler(n, rank, world)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            return RandomSampler(self.dataset, generator=g)  # type: ignore[arg-type]
        return SequentialSampler(self.dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        n = len(self._sampler(self.epoch))  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._sampler(epoch),
            num_workers=self.workers,
            pin_memory=self.target_device.type == "cuda",
            drop_last=self.drop_last,
            generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch + 1),
            persistent_workers=False,
            prefetch_factor=4 if self.workers > 0 else None,
        )
        dev = self.target_device
        norm = norm_constants(self.mean, self.std, dev)
        erase_gen = torch.Generator().manual_seed(self.seed * 1000033 + epoch + 7)
        for x, y in loader:
            x = normalize(x.to(dev, non_blocking=True), *norm)
            if self.cutout > 0:
                cy, cx = draw_cutout(x.shape[0], x.shape[2], x.shape[3], erase_gen)
                x = cutout(x, cy, cx, self.cutout)
            yield resize(x, self.resolution), y.to(dev, non_blocking=True)

    def to(self, device: torch.device | str) -> FolderLoader:
        """Normalise batches on `device` (uint8 crosses the bus, not float)."""
        self.target_device = torch.device(device)
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "folder", "epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.epoch = int(state["epoch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"data loader state is not a FolderLoader state: {exc}") from exc
