"""Save and load pruned models: the structure travels with the weights.

A model built by `prunelab.models.create` is saved as its recipe (name and
arguments), the names of blocks replaced by identity, and its state dict.
`prunelab_input_size` (the size it runs at) and `prunelab_resolution` (an
input side length a method chose, e.g. DWR's resolution pruning) travel in
its metadata.
Loading rebuilds the dense model, resizes every layer to the saved tensor
shapes and loads the weights; it needs nothing but the file, and reads it with
`torch.load(weights_only=True)`, so a file cannot run code, after checking the
CRC-32 of every record in the archive, so a damaged file is an error, never
garbage weights. A model of any
other class is saved pickled whole; loading such a file needs its class to
be importable and the file to be trusted.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from prunelab.atomic import atomic_write_bytes
from prunelab.errors import CorruptFileError
from prunelab.graph.surgery import resize_to
from prunelab.layers import SelectedNorm2d

FORMAT = "prunelab-model"
VERSION = 1


def save(
    model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> None:
    """Write `model` to `path` atomically, with optional JSON-like `meta`."""
    arch = getattr(model, "prunelab_arch", None)
    meta = dict(meta or {})
    input_size = getattr(model, "prunelab_input_size", None)
    if input_size is not None:
        meta.setdefault("input_size", list(input_size))
    resolution = getattr(model, "prunelab_resolution", None)
    if resolution is not None:  # chosen by a method: every input is resized to it
        meta.setdefault("resolution", int(resolution))
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION, "meta": meta}
    if arch is not None:
        payload["kind"] = "recipe"
        payload["arch"] = arch
        payload["identity"] = [
            name for name, m in model.named_modules() if name and isinstance(m, nn.Identity)
        ]
        # layers a method put in place of the recipe's (e.g. bwcp's SelectedNorm2d)
        payload["rebuilt"] = {
            name: m.spec() for name, m in model.named_modules() if isinstance(m, SelectedNorm2d)
        }
        state = model.state_dict()
        payload["state_dict"] = {k: v.detach().cpu() for k, v in state.items()}
        # per-module format versions (mnasnet's load_state_dict refuses a state without them)
        payload["state_versions"] = dict(getattr(state, "_metadata", {}))
    else:
        payload["kind"] = "pickle"
        buf = io.BytesIO()
        torch.save(model, buf)
        payload["module"] = buf.getvalue()
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    trust_pickle: bool = False,
) -> nn.Module:
    """Load a model written by `save`, in eval mode, with its `prunelab_meta` attached."""
    payload = _read(path, map_location)
    if payload["kind"] == "recipe":
        from prunelab.models import create_from_arch

        model = create_from_arch(payload["arch"])
        for name, spec in payload.get("rebuilt", {}).items():
            model.set_submodule(name, SelectedNorm2d.from_spec(spec))
        for name in payload.get("identity", []):
            if not isinstance(model.get_submodule(name), nn.Identity):
                model.set_submodule(name, nn.Identity())
        state = _with_versions(payload, model)
        resize_to(model, {k: v.shape for k, v in state.items()})
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CorruptFileError(f"{path}: weights do not fit the saved recipe: {exc}") from exc
    elif payload["kind"] == "pickle":
        if not trust_pickle:
            raise CorruptFileError(
                f"{path} holds a pickled model of a class prunelab cannot rebuild; "
                "pass trust_pickle=True if you trust the file"
            )
        model = torch.load(
            io.BytesIO(payload["module"]), map_location=map_location, weights_only=False
        )
    else:
        raise CorruptFileError(f"{path}: unknown model kind {payload['kind']!r}")
    meta = payload.get("meta", {})
    model.prunelab_meta = meta
    if "input_size" in meta:
        model.prunelab_input_size = tuple(meta["input_size"])
    if meta.get("resolution") is not None:
        model.prunelab_resolution = int(meta["resolution"])
    return model.to(map_location).eval()


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata saved with a model, without building the model."""
    return dict(_read(path, "cpu").get("meta", {}))


def _with_versions(payload: dict[str, Any], model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The saved state dict with its per-module versions (files before they were saved:
    the rebuilt model's own, which is what the same code wrote)."""
    state = OrderedDict(payload["state_dict"])
    versions = payload.get("state_versions")
    if versions is None:
        versions = getattr(model.state_dict(), "_metadata", {})
    state._metadata = OrderedDict(versions)  # type: ignore[attr-defined]
    return state


def _read(path: str | os.PathLike[str], map_location: str | torch.device) -> dict[str, Any]:
    if not os.path.exists(path):
        raise CorruptFileError(f"no model file at {path}")
    if os.path.isdir(path):
        raise CorruptFileError(f"{path} is a folder, not a model file (e.g. {path}/model.pt)")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptFileError(f"{path} is not a readable prunelab model file: {reason}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not a prunelab model file (no '{FORMAT}' header)")
    if payload.get("version", 0) > VERSION:
        raise CorruptFileError(
            f"{path} was written by a newer prunelab (format version {payload['version']})"
        )
    return payload


def _check_archive(path: str | os.PathLike[str]) -> None:
    """Verify the CRC-32 of every record: torch.load alone reads damaged bytes as weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError,
            KeyError, IndexError, OverflowError) as exc:  # a damaged zip index, header or record
        raise CorruptFileError(f"{path} is not a readable prunelab model file "
                               f"(damaged or not a torch archive: {exc})") from exc
    if bad is not None:
        raise CorruptFileError(
            f"{path} is damaged: record {bad!r} fails its CRC-32 checksum (re-save or re-copy it)"
        )
