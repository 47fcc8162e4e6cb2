"""Training checkpoints: atomic writes, safe loads, and the random states that make resume exact.

A checkpoint is one torch.save'd dict. It is written to a temp file in the
same folder, fsync'ed and renamed over the old one, so a crash leaves either
the previous or the new checkpoint, never half of one. Loading uses
`weights_only=True`; a damaged file becomes one CorruptFileError naming it.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.atomic import atomic_write_bytes
from prunelab.errors import ConfigError, CorruptFileError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "prunelab-train-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python random states, in weights_only-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python random: same seed, same run."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write `state` (plus a format marker) to `path`."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))
    return path


def load_checkpoint(path: str | os.PathLike[str], *, trusted: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, on the CPU.

    Tries `weights_only=True` first. Objects it refuses (a callback that stored
    a custom class) are loaded with full unpickling only when `trusted` (the
    trainer's own run folder); otherwise that is an error saying why.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) or not _intact_zip(path):
            raise _corrupt(path, exc) from exc
        if not trusted:
            raise CorruptFileError(
                f"checkpoint {path} holds objects other than tensors and plain values, "
                f"refused by the safe loader: {str(exc).splitlines()[0]}"
            ) from exc
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise _corrupt(path, exc2) from exc2
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError,
            AttributeError, IndexError) as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not a prunelab training checkpoint")
    if state.get("version", 0) > VERSION:
        raise CorruptFileError(f"{path} has checkpoint version {state.get('version')}, "
                               f"newer than this prunelab understands ({VERSION})")
    return state


def _intact_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _corrupt(path: Path, exc: BaseException) -> CorruptFileError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CorruptFileError(f"checkpoint {path} is truncated or damaged ({reason})")
