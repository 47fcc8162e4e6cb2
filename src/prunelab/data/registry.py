"""`build_data(name, ...)`: one entry point from a data set name to train/test loaders.

Adding a data set is one builder function and one `@register_data` line. A
builder returns a `DataBundle`; common options (batch size, hold-out size,
seed, resolution) mean the same thing for every data set.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import typing
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.distributed as dist

from prunelab.data.archive import CIFAR10_JPG_SHA256, load_cifar10_jpg
from prunelab.data.arrays import ImageArrays, data_root
from prunelab.data.cifar import load_cifar_pickled
from prunelab.data.folder import FolderLoader, image_folder_splits
from prunelab.data.loader import TensorLoader
from prunelab.data.synthetic import make_synthetic
from prunelab.errors import ConfigError, UnknownNameError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Loader(Protocol):
    """What the training loop needs of a loader (TensorLoader and FolderLoader)."""

    batch_size: int
    resolution: int | None
    epoch: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...
    @property
    def num_samples(self) -> int: ...
    def to(self, device: torch.device | str) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DataBundle:
    """Loaders of one data set plus what a model needs to know about its inputs.

    `train` never contains the `holdout` images (when a hold-out was asked
    for); `holdout` and `test` are un-augmented and in fixed order (the data set's:
    sorted by class for image folders; `in_random_order` for a prefix or halves).
    `input_size` is the native (C, H, W); `resolution` the side length every
    batch is resized to (None = native), settable for all loaders at once so a
    pruned model's recorded resolution can be applied to evaluation.
    """

    def __init__(
        self,
        name: str,
        train: Loader,
        test: Loader,
        *,
        num_classes: int,
        input_size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        classes: list[str] | None = None,
        holdout: Loader | None = None,
    ) -> None:
        self.name = name
        self.train = train
        self.test = test
        self.holdout = holdout
        self.num_classes = num_classes
        self.input_size = input_size
        self.mean = mean
        self.std = std
        self.classes = classes if classes is not None else [str(i) for i in range(num_classes)]
        self._resolution = train.resolution

    def loaders(self) -> list[Loader]:
        return [x for x in (self.train, self.test, self.holdout) if x is not None]

    @property
    def resolution(self) -> int | None:
        return self._resolution

    def set_resolution(self, resolution: int | None) -> None:
        """Resize every batch of every loader to resolution x resolution (None: native size)."""
        if resolution is not None and resolution < 1:
            raise ConfigError(f"resolution must be a positive pixel count, got {resolution}")
        if resolution == self.input_size[1] and resolution == self.input_size[2]:
            resolution = None
        self._resolution = resolution
        for loader in self.loaders():
            loader.resolution = resolution

    @property
    def effective_input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the batches the model actually sees."""
        c, h, w = self.input_size
        r = self._resolution
        return (c, h, w) if r is None else (c, r, r)

    def to(self, device: torch.device | str) -> DataBundle:
        """Move in-memory images to `device` (augmentation then runs there)."""
        memo: dict[int, torch.Tensor] = {}  # train and hold-out share one image tensor
        for loader in self.loaders():
            if isinstance(loader, TensorLoader):
                loader.to(device, memo)
            else:
                loader.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """What a run log should record about its data: name, sizes and augmentation."""
        train = self.train
        return {
            "name": self.name, "train": train.num_samples, "test": self.test.num_samples,
            "holdout": self.holdout.num_samples if self.holdout is not None else 0,
            "classes": self.num_classes, "input_size": list(self.input_size),
            "resolution": self._resolution, "augment": getattr(train, "augment", True),
            "cutout": getattr(train, "cutout", 0),
        }  # fmt: skip

    def __repr__(self) -> str:
        hold = f", holdout={self.holdout.num_samples}" if self.holdout is not None else ""
        return (f"DataBundle({self.name!r}, train={self.train.num_samples}, "
                f"test={self.test.num_samples}{hold}, classes={self.num_classes}, "
                f"input={self.input_size}, resolution={self._resolution})")


Builder = Callable[..., DataBundle]
_BUILDERS: dict[str, Builder] = {}
_COMMON = ("batch_size", "eval_batch_size", "holdout", "seed", "resolution", "augment",
           "cutout", "drop_last", "workers", "root", "download")


def register_data(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make a builder available to build_data under `name`."""
    def deco(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn
    return deco


def available_data() -> list[str]:
    return sorted(_BUILDERS)


def data_options(name: str) -> dict[str, Any]:
    """The options of data set `name` beyond the common ones, with their type hints."""
    if name not in _BUILDERS:
        raise UnknownNameError("data set", name, list(_BUILDERS))
    builder = _BUILDERS[name]
    hints = typing.get_type_hints(builder)
    return {k: hints.get(k, Any) for k, p in inspect.signature(builder).parameters.items()
            if k not in _COMMON and p.kind is p.KEYWORD_ONLY}  # fmt: skip


def common_data_options() -> dict[str, Any]:
    """The options every data set takes (build_data's keywords), with their type hints."""
    hints = typing.get_type_hints(build_data)
    return {k: hints[k] for k in _COMMON}


def in_random_order(loader: Loader, seed: int = 0) -> Loader:
    """A copy of `loader` that visits its samples in a fixed random order.

    Hold-out and test loaders keep the data set's order, which for image folders
    is sorted by class: the first batches are one class, and two halves of the
    split hold different classes. Code that takes a prefix of a split or halves
    it (DBP's probes fit on one half, scored on the other) must draw from this
    copy. The copy has its own generator (the original's epochs are untouched)
    and shares the samples. A loader with no `shuffle` switch is returned as is.
    """
    if not hasattr(loader, "shuffle"):
        return loader
    out = copy.copy(loader)
    out.shuffle = True  # type: ignore[attr-defined]
    out.epoch = 0
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        out.generator = torch.Generator().manual_seed(seed)  # type: ignore[attr-defined]
    else:  # FolderLoader: its sampler seeds a generator from (seed, epoch)
        out.seed = seed  # type: ignore[attr-defined]
    return out


def split_holdout(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train indices, hold-out indices) partition of range(n), both sorted."""
    if holdout < 0 or holdout >= n:
        raise ConfigError(f"holdout must be in 0..{n - 1} for {n} training images, got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


@contextlib.contextmanager
def _rank0_first() -> Iterator[None]:
    """Under torch.distributed, let rank 0 fill a cache before the others read it."""
    active = dist.is_available() and dist.is_initialized()
    if active and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if active and dist.get_rank() == 0:
            dist.barrier()


def build_data(
    name: str,
    *,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    holdout: int = 0,
    seed: int = 0,
    resolution: int | None = None,
    augment: bool = True,
    cutout: int = 0,
    drop_last: bool = True,
    workers: int | None = None,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    **options: Any,
) -> DataBundle:
    """Build the loaders of data set `name` (see `available_data()`).

    batch_size is per process (the global batch under DDP is batch_size x
    world size). `holdout=N` reserves N training images, chosen by `seed`, in
    `bundle.holdout` and removes them from `bundle.train`. `root` defaults to
    $PRUNELAB_DATA. `cutout=S` adds an S x S erased square to the training
    augmentation (16 is the usual CIFAR-10 value; 0 = off). Data-set specific
    options (e.g. `n_train` for synthetic, `image_size` for imagefolder,
    `sha256`/`cache_dir` for cifar10_jpg) are passed through; unknown ones
    raise ConfigError.
    """
    own = data_options(name)
    unknown = sorted(k for k in options if k not in own)
    if unknown:
        raise ConfigError(f"data set {name!r} has no option(s) {unknown}; its options: "
                          f"{sorted(own)}; common options: {list(_COMMON)}")
    builder = _BUILDERS[name]
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    common = {
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size or batch_size,
        "holdout": holdout,
        "seed": seed,
        "resolution": resolution,
        "augment": augment,
        "cutout": cutout,
        "drop_last": drop_last,
        "workers": workers,
        "root": root,
        "download": download,
    }
    bundle = builder(**common, **options)
    bundle.set_resolution(resolution)
    return bundle


def bundle_from_arrays(
    name: str,
    arrays: ImageArrays,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    eval_batch_size: int,
    holdout: int,
    seed: int,
    resolution: int | None,
    augment: bool,
    drop_last: bool,
    pad: int = 4,
    cutout: int = 0,
) -> DataBundle:
    """In-memory loaders over decoded arrays (shared by CIFAR, JPEG archive and synthetic)."""
    train_x = torch.from_numpy(arrays.train_x)
    train_y = torch.from_numpy(arrays.train_y)
    test_x = torch.from_numpy(arrays.test_x)
    test_y = torch.from_numpy(arrays.test_y)
    eval_kw: dict[str, Any] = {"batch_size": eval_batch_size, "mean": mean, "std": std,
                               "resolution": resolution}
    train_idx: torch.Tensor | None = None
    hold: TensorLoader | None = None
    if holdout:
        train_idx, hold_idx = split_holdout(train_x.shape[0], holdout, seed)
        hold = TensorLoader(train_x, train_y, indices=hold_idx, **eval_kw)
    train = TensorLoader(
        train_x, train_y, indices=train_idx, batch_size=batch_size, mean=mean, std=std,
        shuffle=True, augment=augment, drop_last=drop_last, pad=pad, cutout=cutout,
        resolution=resolution, seed=seed,
    )
    test = TensorLoader(test_x, test_y, **eval_kw)
    c, h, w = arrays.train_x.shape[1:]
    return DataBundle(name, train, test, num_classes=arrays.num_classes, input_size=(c, h, w),
                      mean=mean, std=std, classes=arrays.classes, holdout=hold)


def _in_memory_kw(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw[k] for k in ("batch_size", "eval_batch_size", "holdout", "seed", "resolution",
                               "augment", "cutout", "drop_last")}


@register_data("synthetic")
def _synthetic(
    *,
    n_train: int = 1024,
    n_test: int = 512,
    image_size: int = 32,
    num_classes: int = 10,
    channels: int = 3,
    noise: float = 30.0,
    data_seed: int = 0,
    pad: int | None = None,
    **kw: Any,
) -> DataBundle:
    arrays = make_synthetic(n_train, n_test, image_size, num_classes, channels, data_seed, noise)
    mean, std = (0.5,) * channels, (0.25,) * channels
    if pad is None:
        pad = max(1, image_size // 8)
    return bundle_from_arrays("synthetic", arrays, mean=mean, std=std, pad=pad,
                              **_in_memory_kw(kw))


@register_data("cifar10_jpg")
def _cifar10_jpg(
    *, sha256: str | None = CIFAR10_JPG_SHA256, cache_dir: str | None = None, quiet: bool = True,
    **kw: Any,
) -> DataBundle:
    root = data_root(kw["root"])
    with _rank0_first():
        arrays = load_cifar10_jpg(root, sha256=sha256, cache_dir=cache_dir, workers=kw["workers"],
                                  quiet=quiet)
    return bundle_from_arrays("cifar10_jpg", arrays, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                              **_in_memory_kw(kw))


@register_data("cifar10")
def _cifar10(**kw: Any) -> DataBundle:
    root = data_root(kw["root"])
    with _rank0_first():
        arrays = load_cifar_pickled(root, "cifar10", download=kw["download"])
    return bundle_from_arrays("cifar10", arrays, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                              **_in_memory_kw(kw))


@register_data("cifar100")
def _cifar100(**kw: Any) -> DataBundle:
    root = data_root(kw["root"])
    with _rank0_first():
        arrays = load_cifar_pickled(root, "cifar100", download=kw["download"])
    return bundle_from_arrays("cifar100", arrays, mean=CIFAR100_MEAN, std=CIFAR100_STD,
                              **_in_memory_kw(kw))


@register_data("imagefolder")
def _imagefolder(
    *,
    image_size: int = 224,
    resize_size: int | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    **kw: Any,
) -> DataBundle:
    if kw["root"] is None:
        raise ConfigError("imagefolder needs root=<folder with train/ and val/ sub-folders>")
    train_set, train_eval_set, val_set, classes = image_folder_splits(kw["root"], image_size,
                                                                      resize_size)
    common: dict[str, Any] = {"mean": mean, "std": std, "resolution": kw["resolution"],
                              "workers": kw["workers"], "seed": kw["seed"]}
    eval_bs = kw["eval_batch_size"]
    n = len(train_set)
    train_idx: list[int] | None = None
    hold: FolderLoader | None = None
    if kw["holdout"]:
        t_idx, h_idx = split_holdout(n, kw["holdout"], kw["seed"])
        train_idx = t_idx.tolist()
        hold = FolderLoader(train_eval_set, batch_size=eval_bs, indices=h_idx.tolist(), **common)
    if not kw["augment"]:
        train_set = train_eval_set
    train = FolderLoader(train_set, batch_size=kw["batch_size"], shuffle=True,
                         drop_last=kw["drop_last"], indices=train_idx,
                         cutout=kw["cutout"] if kw["augment"] else 0, **common)
    test = FolderLoader(val_set, batch_size=eval_bs, **common)
    return DataBundle("imagefolder", train, test, num_classes=len(classes),
                      input_size=(3, image_size, image_size), mean=tuple(mean), std=tuple(std),
                      classes=classes, holdout=hold)
