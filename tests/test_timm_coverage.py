"""timm's models (the optional `timm` extra): each prunes, or is refused with one clear error.

A model that prunes holds the engine's contracts at ~50% of every group: masked ==
pruned outputs, planned cost == counted cost, the pruned model saves and loads
to identical outputs, and it trains a step. A model in REFUSED must be refused
with one UnsupportedModelError naming the op it stops at; a refused model that
starts to prune fails here, so the list (and bench/results/timm_coverage.md,
from `bench/model_coverage.py --timm`) cannot go stale. Without timm, the
models are skipped and the missing extra is one clear error.
"""

from __future__ import annotations

import sys

import pytest
import torch

import prunelab
from prunelab.cli import main
from prunelab.cli.commands import run_models
from prunelab.errors import MissingDependencyError, UnknownNameError
from prunelab.graph.selfcheck import check_prunes, randomize_norms
from prunelab.models import timm_models
from prunelab.models.timm_models import CASES, TimmCase
from tests._coverage import assert_prunes_or_is_refused

needs_timm = pytest.mark.skipif(
    not timm_models.installed(), reason="timm is not installed: pip install 'prunelab[timm]'"
)

# model -> the op its refusal must name (every model of the list prunes: vit_tiny by its
# attention heads and MLP width, tests/test_timm_attention.py)
REFUSED: dict[str, str] = {}
_SLOW = {"resnet50", "cspresnet50", "hrnet_w18_small", "dla34"}  # more than ~5 s each here


def _param(case: TimmCase) -> object:
    return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.name in _SLOW else [])


@needs_timm
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_timm_model_prunes_or_is_refused_clearly(case: TimmCase) -> None:
    torch.manual_seed(0)
    model = randomize_norms(prunelab.create(f"timm/{case.name}", num_classes=10, **case.kwargs))
    x = torch.randn(2, 3, case.image_size, case.image_size)
    result = check_prunes(model, x, flops_ratio=False, copy_model=False, roundtrip=True)
    assert_prunes_or_is_refused(case.name, result, REFUSED)
    if case.name not in REFUSED:  # passed includes these; said here for the reader
        assert result.load_error == 0.0 and result.trains


@needs_timm
def test_timm_models_are_created_by_name_and_listed(capsys) -> None:
    model = prunelab.create("timm/regnetx_002", num_classes=7)
    assert model.prunelab_arch == {"name": "timm/regnetx_002", "kwargs": {"num_classes": 7}}
    assert model.prunelab_input_size == (3, 224, 224)
    assert prunelab.models.is_registered("timm/resnet50.a1_in1k")  # a pretrained tag is fine
    with pytest.raises(UnknownNameError, match=r"'timm/resnet5o'.*timm/resnet50"):
        prunelab.create("timm/resnet5o")
    run_models()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("timm/NAME") and "resnest14d" in last and "--timm" in last
    run_models(all_timm=True)
    listed = capsys.readouterr().out
    assert "timm/resnest14d " in listed and len(listed.splitlines()) > 1000


def test_without_timm_a_timm_name_is_one_line_naming_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'prunelab\[timm\]'"):
        prunelab.create("timm/resnet50")
    assert main(["train", "model=timm/resnet50", "data.name=synthetic", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prunelab[timm]" in err, err
    run_models()
    assert capsys.readouterr().out.splitlines()[-1].endswith("pip install 'prunelab[timm]'")
