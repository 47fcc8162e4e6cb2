"""Export to ONNX and TorchScript: the written file computes what the model computes."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab import io, optional
from prunelab.cli import main
from prunelab.errors import ExportError, MissingDependencyError, UnsupportedModelError
from prunelab.models.densenet import DenseNet
from tests._nets import randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _onnx_outputs(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _assert_same(expected: torch.Tensor, got: np.ndarray) -> None:
    scale = expected.abs().max().item()
    assert got.shape == tuple(expected.shape)
    assert np.abs(got - expected.numpy()).max() <= 1e-4 * scale


def _pruned_densenet() -> nn.Module:
    model = randomize_bn(DenseNet(depth=10, growth_rate=8, num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    plan = prunelab.planners.for_cost(model, prunelab.trace(model, x), 0.5)
    return prunelab.prune(model, plan).eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "fold_bn"),
    [(lambda: prunelab.create("resnet20"), True),
     (lambda: prunelab.create("mobilenet_v2", num_classes=10), False),
     (_pruned_densenet, True)],
    ids=["resnet20", "mobilenet_v2", "pruned_densenet"],
)  # fmt: skip
def test_onnx_round_trip_equals_the_model_at_any_batch(
    tmp_path: Path, build, fold_bn: bool
) -> None:
    torch.manual_seed(0)
    model = randomize_bn(build()).eval()
    path = prunelab.export(
        model, tmp_path / "m.onnx", example_input=torch.zeros(1, 3, 32, 32), fold_bn=fold_bn
    )
    x = torch.randn(5, 3, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        _assert_same(model(x), _onnx_outputs(path, x))


def test_torchscript_round_trip_of_a_pruned_model(tmp_path: Path) -> None:
    model = _pruned_densenet()
    path = prunelab.export(
        model, tmp_path / "m.ts", format="torchscript", example_input=torch.zeros(1, 3, 32, 32)
    )
    with warnings.catch_warnings():  # torch.jit is deprecated; its format still loads
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        _assert_same(model(x), loaded(x).numpy())


class _Eigenvalues(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x).S


class _Noisy(nn.Module):
    """Exports fine, but never computes the same twice: the check must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_an_op_onnx_cannot_export_is_one_clear_error_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    with pytest.raises(UnsupportedModelError, match=r"linalg_svd.*ONNX cannot export"):
        prunelab.export(_Eigenvalues(), tmp_path / "m.onnx", example_input=torch.zeros(1, 3, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_an_export_that_computes_something_else_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from the PyTorch model"):
        prunelab.export(
            _Noisy(), tmp_path / "m.ts", format="torchscript", example_input=torch.zeros(1, 8)
        )
    assert list(tmp_path.iterdir()) == []


def _hide(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name == hidden:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(optional.importlib, "import_module", fake)


def test_a_missing_extra_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _hide(monkeypatch, "onnxscript")
    with pytest.raises(MissingDependencyError, match=r"pip install 'prunelab\[deploy\]'"):
        prunelab.export(nn.Linear(3, 2), tmp_path / "m.onnx", example_input=torch.zeros(1, 3))
    model_file = tmp_path / "m.pt"
    io.save(prunelab.create("resnet20"), model_file)
    assert main(["export", str(model_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prunelab[deploy]" in err and "onnxscript" in err


def test_cli_export_writes_a_checked_file_beside_the_model(tmp_path: Path, capsys) -> None:
    model = prunelab.create("resnet20")
    plan = prunelab.planners.for_cost(model, prunelab.trace(model, torch.zeros(1, 3, 32, 32)), 0.5)
    model_file = tmp_path / "small.pt"
    io.save(prunelab.prune(model, plan), model_file)
    assert main(["export", str(model_file), "--format", "torchscript", "--fold-bn"]) == 0
    written = tmp_path / "small.torchscript.pt"
    assert written.is_file() and "written" in capsys.readouterr().out
    assert main(["export", str(model_file), "--format", "torchscript", "--opset", "17"]) == 2
