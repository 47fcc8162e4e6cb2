"""Decoded image arrays and where data and caches live.

Every in-memory data set (the JPEG archive, the pickled CIFAR batches, the
synthetic set) ends as the same `ImageArrays`, which the in-memory loader turns
into batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunelab.atomic import atomic_write_bytes
from prunelab.errors import DataNotFoundError

DATA_ENV = "PRUNELAB_DATA"
CACHE_ENV = "PRUNELAB_CACHE"


@dataclass
class ImageArrays:
    """uint8 images (N, C, H, W) and int64 labels for a train and a test split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: `root` if given, else $PRUNELAB_DATA.

    Raises DataNotFoundError when neither names an existing folder, saying which
    one was consulted.
    """
    if root is not None:
        path, source = Path(root).expanduser(), "the root argument"
    else:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise DataNotFoundError(
                f"no data folder: pass root=... or set ${DATA_ENV} to the folder holding the data"
            )
        path, source = Path(env).expanduser(), f"${DATA_ENV}"
    if not path.is_dir():
        raise DataNotFoundError(f"data folder {path} (from {source}) does not exist")
    return path


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Decoded-array cache folder: `cache_dir`, else $PRUNELAB_CACHE, else ~/.cache/prunelab."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "prunelab"


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=False))
