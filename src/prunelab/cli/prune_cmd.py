"""`prunelab prune`: from a model to a pruned model, a table, a report and plots."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from prunelab import io
from prunelab.atomic import atomic_write_text
from prunelab.cli.config import LATENCY, dump
from prunelab.cli.setup import (
    apply_resolution,
    check_inputs,
    check_writable,
    checkpoint_path,
    make_data,
    make_method,
    make_model,
    run_dir,
    say,
    train_config,
)
from prunelab.errors import ConfigError
from prunelab.latency_table import LatencySpec
from prunelab.methods import PruneTask
from prunelab.methods.finetune import headline
from prunelab.report import (
    SUMMARY_NAME,
    format_table,
    layer_widths,
    measure,
    plots,
    write_run_report,
)
from prunelab.train import MetricsLog, seed_everything
from prunelab.train.tasks import metric_label, task_for


def run_prune(config: dict[str, Any]) -> dict[str, Any]:
    """Run a pruning configuration end to end; returns the run summary."""
    start = time.perf_counter()
    if config.get("average"):
        raise ConfigError("average (weight averaging) applies to `prunelab train`, not to prune; "
                          "a method's fine-tuning keeps its last weights")
    if config.get("reinit"):
        raise ConfigError("reinit (fresh weights for a pruned architecture) applies to "
                          "`prunelab train checkpoint=PATH`, not to prune")
    check_inputs(config)
    name, method = make_method(config)
    target = float(config.get("target", 0.5))
    metric = str(config.get("metric", "flops"))
    # the latency budget's and the report's timing settings (keys checked by check_inputs)
    spec = LatencySpec.from_config({**LATENCY, **(config.get("latency") or {})})
    out = run_dir(config, "prune")
    check_writable(out)
    # run_dir lets `train.resume` validate; each training of the method gets its own subfolder
    train = train_config(config, {"quiet": bool(config.get("quiet"))}, {"run_dir": str(out)})

    seed_everything(int(config.get("seed", 0)))  # before anything random: the model's init
    say(config, f"data {config['data'].get('name')}")
    data = make_data(config)
    dense = make_model(config, data).eval()
    from_scratch = method.trains_from_scratch or getattr(method.options, "from_scratch", False)
    if not from_scratch and not config.get("checkpoint"):
        say(config, f"warning: {name} prunes a trained model but no checkpoint was given")
    start_model = dense
    if not config.get("checkpoint") and config.get("reference"):
        # Training from scratch: compare with a trained dense model of the same architecture.
        dense = io.load(checkpoint_path(str(config["reference"]))).eval()
    trained_dense = bool(config.get("checkpoint") or config.get("reference"))
    task = PruneTask(
        model=copy.deepcopy(start_model), data=data, target=target, metric=metric, train=train,
        run_dir=out, seed=int(config.get("seed", 0)), quiet=bool(config.get("quiet")),
        teacher=dense if trained_dense else None,
        latency=asdict(spec),
    )  # fmt: skip
    method.check(task)
    out.mkdir(parents=True, exist_ok=True)  # the run starts: everything it needs was found
    atomic_write_text(out / "config.yaml", dump(config))
    dense_input = torch.zeros(1, *data.effective_input_size)
    dense_top1 = None
    if trained_dense:
        say(config, "evaluating the dense model")
        dense_top1 = headline(dense, data)[1]
    say(config, f"pruning with {name} to {target:.0%} of the baseline {metric} -> {out}")
    result = method.run(task)
    pruned = result.model.cpu().eval()
    trained_at = data.effective_input_size
    apply_resolution(pruned, data, config)
    pruned_input = torch.zeros(1, *data.effective_input_size)
    metric_name = task_for(data).headline
    if metric_name in result.test_metrics and data.effective_input_size == trained_at:
        pruned_top1 = result.test_metrics[metric_name]  # the last epoch evaluated this model
    else:
        say(config, "evaluating the pruned model")
        metric_name, pruned_top1 = headline(pruned, data)

    say(config, f"timing both models (batch {spec.batch}, {spec.threads} threads, {spec.runtime})")
    rows = measure(
        {"dense": dense, "pruned": pruned},
        {"dense": dense_input, "pruned": pruned_input},
        {"dense": dense_top1, "pruned": pruned_top1},
        batch=spec.batch, threads=spec.threads, repeats=spec.repeats, runtime=spec.runtime,
    )  # fmt: skip
    table = format_table(rows, spec.batch, spec.threads, metric_label(metric_name), spec.runtime)
    io.save(
        pruned,
        out / "model.pt",
        meta={"method": name, "top1": pruned_top1, "flops": rows[1].flops,
              "params": rows[1].params, "data": config["data"].get("name")},
    )  # fmt: skip
    summary = {
        "command": "prune",
        "model": config.get("model"),
        "method": name,
        "target": target,
        "metric": metric,
        "task_metric": metric_name,
        "rows": [r.to_dict() for r in rows],
        "info": _plain(result.info),
        "seconds": time.perf_counter() - start,
        "training_epochs": method.training_epochs(train),
        "model_file": "model.pt",
        "config": config,
    }
    log = MetricsLog(out / "metrics.jsonl", fresh=True)
    log.write({"kind": "baseline", **rows[0].to_dict()})
    for record in result.history:
        log.write({"kind": "epoch", **record})
    log.write({"kind": "pruned", **rows[1].to_dict()})
    images = _plots(out, dense, pruned, result.history, summary)
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=1, default=str))
    write_run_report(out, summary, table, images)
    if not config.get("quiet"):
        print(table)
        print(f"\nrun folder: {out} (report.md, model.pt, metrics.jsonl, plots)")
    return summary


def _plots(
    out: Path, dense: torch.nn.Module, pruned: torch.nn.Module, history: list, summary: dict
) -> list[Path]:
    title = f"{summary['model']} {summary['method']}"
    widths = plots.kept_channels(
        layer_widths(dense), layer_widths(pruned), out / "kept_channels.png", f"{title}: channels"
    )
    images = [widths]
    metric = summary.get("task_metric", "top1")
    curve = plots.curves(history, out / "curves.png", f"{title}: training", metric,
                         metric_label(metric))
    if curve is not None:
        images.append(curve)
    points = [
        {"label": r["label"], "flops": r["flops"], "top1": r["top1"]} for r in summary["rows"]
    ]
    images.append(plots.accuracy_vs_flops(points, out / "accuracy_vs_flops.png", title,
                                          metric_label(metric)))
    return images


def _plain(value: Any) -> Any:
    """JSON-safe copy of method info (tensors become lists)."""
    return json.loads(
        json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    )
