"""Models timed in onnxruntime and OpenVINO: same outputs as PyTorch, side-by-side timings."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab import io, optional
from prunelab.cli import main
from prunelab.errors import ConfigError, MissingDependencyError
from prunelab.runtimes import RUNTIMES, check_runtime, compare_in_runtime, make_runner
from tests._nets import ConvBN, randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(width: int = 8) -> nn.Module:
    layers = [ConvBN(3, width), ConvBN(width, width), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return randomize_bn(nn.Sequential(*layers, nn.Linear(width, 5))).eval()


def _first_output(result: object) -> np.ndarray:
    if isinstance(result, torch.Tensor):
        return result.numpy()
    if isinstance(result, list):  # onnxruntime
        return result[0]
    return next(iter(result.values()))  # OpenVINO's results map outputs to arrays


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_computes_what_pytorch_computes(runtime: str) -> None:
    model, x = _net(), torch.randn(3, 3, 8, 8)
    got = _first_output(make_runner(model, x, runtime, threads=1)())
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_models_are_timed_side_by_side_in_a_runtime() -> None:
    models = {"wide": _net(16), "narrow": _net(8)}
    x = torch.randn(2, 3, 8, 8)
    stats = compare_in_runtime(models, {"wide": x, "narrow": x}, "onnxruntime", 1, repeats=5)
    assert list(stats) == ["wide", "narrow"]
    assert stats["wide"].speedup == 1.0
    assert stats["narrow"].speedup == pytest.approx(
        stats["wide"].median_ms / stats["narrow"].median_ms
    )
    assert all(s.repeats == 5 and s.median_ms > 0 for s in stats.values())


@pytest.mark.slow
def test_cli_bench_in_a_runtime_prints_one_row_per_model(tmp_path: Path, capsys) -> None:
    model = prunelab.create("resnet20", widths=(4, 8, 8))
    files = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for f in files:
        io.save(model, f)
    argv = ["bench", *map(str, files), "--runtime", "openvino", "--batch", "2",
            "--threads", "1", "--repeats", "3"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "openvino CPU latency (batch 2, 1 threads)" in out
    assert "| a |" in out and "| b |" in out


def test_a_missing_runtime_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real = importlib.import_module

    def without_onnxruntime(name: str, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(optional.importlib, "import_module", without_onnxruntime)
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        check_runtime("onnxruntime")
    assert check_runtime("torch") == "torch"
    with pytest.raises(ConfigError, match="unknown runtime"):
        check_runtime("tensorrt")
    path = tmp_path / "m.pt"
    io.save(prunelab.create("resnet20", widths=(4, 8, 8)), path)
    assert main(["bench", str(path), "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'prunelab[deploy]'" in err
