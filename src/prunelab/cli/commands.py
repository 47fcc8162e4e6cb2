"""The small commands: eval, bench, export, report, models, methods."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from prunelab import io, models
from prunelab.cli.config import check_config
from prunelab.cli.setup import apply_resolution, check_writable, checkpoint_path, make_data
from prunelab.methods import list_methods
from prunelab.metrics import count
from prunelab.models import timm_models
from prunelab.report import compare_runs, format_table, measure
from prunelab.runtimes import check_runtime
from prunelab.train.tasks import evaluate_model, metric_label, task_for


def run_eval(model_path: str, config: dict) -> dict[str, float]:
    """The task's metrics (top-1 for classification), FLOPs and params on a test split."""
    check_config(config)
    model = io.load(checkpoint_path(model_path))
    data = make_data(config)
    apply_resolution(model, data, config)
    task = task_for(data)
    metrics = evaluate_model(model, data.test, task)
    cost = count(model, torch.zeros(1, *data.effective_input_size))
    size = "x".join(str(s) for s in data.effective_input_size[1:])
    shown = ", ".join(f"{metric_label(k)} {metrics[k]:.2f}%" for k in task.metrics if k != "loss")
    print(f"{model_path}: {shown} on {data.name} test ({size}), {cost}")
    return {**{k: metrics[k] for k in task.metrics}, "flops": cost.flops, "params": cost.params}


def run_bench(
    model_paths: list[str], batch: int, threads: int, repeats: int, runtime: str = "torch"
) -> str:
    """Latency of saved models side by side in `runtime`; the first is the speedups' baseline."""
    check_runtime(runtime)  # before loading anything: a missing extra is one line
    loaded = {Path(p).stem if p not in ("dense",) else p: io.load(checkpoint_path(p))
              for p in model_paths}  # fmt: skip
    inputs = {k: torch.zeros(1, *getattr(m, "prunelab_input_size", (3, 32, 32)))
              for k, m in loaded.items()}  # fmt: skip
    rows = measure(loaded, inputs, {k: None for k in loaded}, batch, threads, repeats, runtime)
    table = format_table(rows, batch, threads, runtime=runtime)
    print(table)
    return table


def run_export(
    model_path: str, format: str, fold_bn: bool, opset: int | None, out: str | None
) -> Path:
    """Write a saved model as ONNX or TorchScript, checked against the model itself."""
    from prunelab.exporter import SUFFIXES, export

    source = checkpoint_path(model_path)
    model = io.load(source)
    target = Path(out) if out else source.with_name(source.stem + SUFFIXES[format])
    export(model, target, format=format, fold_bn=fold_bn, opset=opset)  # type: ignore[arg-type]
    print(f"written: {target} ({format}, dynamic batch, outputs checked against PyTorch)")
    return target


def run_report(runs: list[str], out: str) -> None:
    check_writable(Path(out), "--out")
    table, image = compare_runs(runs, Path(out))
    print(table)
    print(f"\nwritten: {Path(out) / 'report.md'}, {image}")


def run_models(all_timm: bool = False) -> None:
    """Our models and torchvision's, then timm's: a summary, or every name with `all_timm`."""
    for name in models.list_models():
        size = "x".join(str(s) for s in models.default_input_size(name))
        print(f"{name:28s} {size}  {models.default_num_classes(name)} classes")
    if not timm_models.installed():
        print(f"{timm_models.PREFIX}NAME{'':19s} timm's models, after pip install 'prunelab[timm]'")
        return
    names = timm_models.names()
    if all_timm:
        for name in names:
            size = "x".join(str(s) for s in timm_models.input_size(name))
            print(f"{name:28s} {size}  1000 classes")
        return
    print(
        f"{timm_models.PREFIX}NAME{'':19s} {len(names)} models of timm {timm_models.version()} "
        f"(built with pretrained=False; pruning checked on {', '.join(timm_models.CHECKED)}: "
        "bench/results/timm_coverage.md); `prunelab models --timm` lists them all"
    )


def run_methods() -> None:
    for name, cls in list_methods().items():
        kind = "trains from scratch" if cls.trains_from_scratch else "prunes a trained model"
        print(f"{name}: {cls.summary} ({kind})")
        for f in dataclasses.fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            print(f"    {f.name} = {default!r}")
