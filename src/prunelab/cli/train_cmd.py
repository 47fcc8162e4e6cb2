"""`prunelab train`: train a dense (or already pruned) model; runs under torchrun too."""

from __future__ import annotations

import json
import time
import typing
from pathlib import Path
from typing import Any

import torch

from prunelab import io
from prunelab.atomic import atomic_write_text
from prunelab.cli.config import dump, typed
from prunelab.cli.setup import (
    check_inputs,
    check_writable,
    make_data,
    make_model,
    run_dir,
    say,
    train_config,
)
from prunelab.errors import ConfigError
from prunelab.metrics import count
from prunelab.models.layers import reinitialise
from prunelab.report import SUMMARY_NAME, ModelStats, format_table, plots, write_run_report
from prunelab.train import CHECKPOINT_NAME, Trainer, WeightAveraging, seed_everything
from prunelab.train import distributed as D
from prunelab.train.tasks import metric_label


def run_train(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train per `config`; rank 0 writes model.pt, summary.json and report.md."""
    start = time.perf_counter()
    check_inputs(config)
    ctx = D.init_distributed()
    out = Path(D.broadcast_object(str(run_dir(config, "train")) if ctx.is_main else None))
    defaults = {"quiet": bool(config.get("quiet")), "seed": config.get("seed", 0)}
    train = train_config(config, defaults, {"run_dir": str(out)})
    average = make_average(config, train.epochs)
    check_writable(out)
    if train.resume:
        check_resumable(out)
    if config.get("reinit") and not config.get("checkpoint"):
        raise ConfigError("reinit=true re-initialises a checkpoint's architecture: give "
                          "checkpoint=PATH (a zoo model starts from fresh weights anyway)")
    seed_everything(train.seed)  # before anything random: the model's initial weights
    data = make_data(config)
    model = make_model(config, data)
    if config.get("reinit"):
        # a pruned architecture trained from scratch (the baseline of Liu et al., "Rethinking
        # the Value of Network Pruning", 2019): it separates what a method's architecture is
        # worth from what its inherited weights are worth
        reinitialise(model, train.seed)
    if ctx.is_main:  # the run starts: everything it needs was found
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump(config))
    say(config, f"training {config.get('model')} on {data.name} for {train.epochs} epochs -> {out}")
    trainer = Trainer(model, data, train, [average] if average else [])
    try:
        final = trainer.fit()
        label, top1, info = "trained", final.get(trainer.task.headline), {"final": final}
        if average is not None:  # the saved model is the average; the last step's is reported
            average.apply_to(trainer.model)
            label, top1 = f"trained ({average.name})", average.final_top1(trainer)
            info["average"] = {
                "name": average.name,
                "top1": top1,
                "last_step_top1": final.get("top1"),
            }
    finally:
        D.cleanup()
    if not ctx.is_main:
        return None
    if average is not None:
        say(
            config,
            f"weights of the last step: {trainer.task.headline} "
            f"{final.get(trainer.task.headline):.2f}%; "
            f"saving their average {average.name}: {top1:.2f}%",
        )
    model = trainer.model.to(memory_format=torch.contiguous_format).cpu().eval()
    x = torch.zeros(1, *data.effective_input_size)
    cost = count(model, x)
    row = ModelStats(label, top1, cost.flops, cost.params)
    io.save(model, out / "model.pt", meta={"top1": top1, "data": data.name,
                                             "recipe": train.to_dict(),
                                             "average": config.get("average")})  # fmt: skip
    summary = {
        "command": "train", "model": config.get("model"), "method": None, "rows": [row.to_dict()],
        "info": info, "seconds": time.perf_counter() - start,
        "model_file": "model.pt", "config": config,
    }  # fmt: skip
    images = []
    headline = trainer.task.headline
    curve = plots.curves(trainer.history, out / "curves.png", f"{config.get('model')}: training",
                         headline, metric_label(headline))
    if curve is not None:
        images.append(curve)
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=1, default=str))
    table = format_table([row], 1, torch.get_num_threads(), metric_label(trainer.task.headline))
    write_run_report(out, summary, table, images)
    if not config.get("quiet"):
        print(table)
        print(f"\nrun folder: {out}")
    return summary


def check_resumable(out: Path) -> None:
    """`--resume` continues a run: its folder and checkpoint must be there."""
    if not out.is_dir():
        raise ConfigError(f"--resume: there is no run folder {out} to continue "
                          "(drop --resume to start a new run there)")  # fmt: skip
    if not (out / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"--resume: {out} holds no {CHECKPOINT_NAME} to continue from "
                          "(drop --resume to start the run again from scratch)")  # fmt: skip


def make_average(config: dict[str, Any], epochs: int) -> WeightAveraging | None:
    """The `average:` section as a WeightAveraging callback (None when absent)."""
    options = config.get("average")
    if not options:
        return None
    known = {"decay", "start_epoch", "name"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown average option(s) {unknown}; known: {sorted(known)}")
    average = WeightAveraging(**typed(options, typing.get_type_hints(WeightAveraging.__init__),
                                      "average"))  # fmt: skip
    if average.start_epoch >= epochs:
        raise ConfigError(
            f"average.start_epoch={average.start_epoch} is not before the end "
            f"of training ({epochs} epochs): nothing would be averaged"
        )
    return average
