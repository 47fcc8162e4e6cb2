"""Optional dependencies, imported only when a feature asks for them."""

from __future__ import annotations

import importlib
from types import ModuleType

from prunelab.errors import MissingDependencyError

# import name -> (pip name, prunelab extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "deploy"),
    "onnxscript": ("onnxscript", "deploy"),
    "onnxruntime": ("onnxruntime", "deploy"),
    "openvino": ("openvino", "deploy"),
    "torch_pruning": ("torch-pruning", "bench"),
    "timm": ("timm", "timm"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module`, or raise one MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = EXTRAS.get(module, (module, "deploy"))
        raise MissingDependencyError(package, extra, purpose) from None
