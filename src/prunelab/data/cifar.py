"""CIFAR-10/100 in the pickled "python version" layout torchvision downloads.

`cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) and
`cifar-100-python/` (train, test, meta) under the data folder. The pickles
are read with an unpickler that only admits the numpy types those files
contain, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data.arrays import ImageArrays
from prunelab.errors import CorruptFileError, DataNotFoundError

_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": b"labels",
        "names": b"label_names",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": b"fine_labels",
        "names": b"fine_label_names",
        "classes": 100,
    },
}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as exc:
        raise CorruptFileError(f"{path} is not a readable CIFAR batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} is not a CIFAR batch (a {type(obj).__name__})")
    return obj


def _read_split(folder: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        path = folder / name
        batch = _load_pickle(path)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int64)
            xs.append(data.reshape(-1, 3, 32, 32))
        except (KeyError, ValueError) as exc:
            raise CorruptFileError(f"{path} is not a CIFAR batch: {exc}") from exc
        if labels.shape[0] != xs[-1].shape[0]:
            raise CorruptFileError(f"{path}: {xs[-1].shape[0]} images but {labels.shape[0]} labels")
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar_pickled(root: Path, which: str = "cifar10", download: bool = False) -> ImageArrays:
    """CIFAR-10 or CIFAR-100 from the pickled batches under `root`.

    With `download=True` a missing folder is fetched by torchvision first.
    """
    layout = _LAYOUT[which]
    folder = Path(root) / layout["folder"]
    needed = [*layout["train"], *layout["test"]]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing and download:
        from torchvision import datasets

        cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as exc:  # network, disk, checksum: all mean "not there"
            raise DataNotFoundError(f"could not download {which} into {root}: {exc}") from exc
        missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        hint = " (or use cifar10_jpg for the JPEG archive)" if which == "cifar10" else ""
        raise DataNotFoundError(
            f"{which} not found: looked for {', '.join(str(folder / n) for n in missing)}; "
            f"pass download=True to fetch it{hint}"
        )
    train_x, train_y = _read_split(folder, layout["train"], layout["labels"])
    test_x, test_y = _read_split(folder, layout["test"], layout["labels"])
    classes = [str(i) for i in range(layout["classes"])]
    meta_path = folder / layout["meta"]
    if meta_path.is_file():
        names = _load_pickle(meta_path).get(layout["names"])
        if names is not None and len(names) == layout["classes"]:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    for split, y in (("train", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= layout["classes"]):
            raise CorruptFileError(f"{folder}: {split} labels outside 0..{layout['classes'] - 1}")
    return ImageArrays(train_x, train_y, test_x, test_y, classes)
