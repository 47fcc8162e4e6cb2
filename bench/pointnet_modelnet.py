"""PointNet++ SSG on ModelNet10 (1,024 points): dense vs CHEX vs uniform L1 at 50% FLOPs.

Every arm trains for the same number of epochs on one recipe (batch 32, SGD
Nesterov 0.9, lr 0.05, 1 warm-up epoch, cosine to 0, weight decay 1e-4, the
PointNet++ augmentation: point dropout, scale, shift, jitter):

    dense      dense PointNet++ SSG for EPOCHS epochs (keeps its weights at PRUNE_AT)
    chex       CHEX from scratch for EPOCHS epochs to 50% FLOPs (update every epoch,
               T_max = 0.72 of training)
    uniform    uniform-L1 prune of the dense PRUNE_AT-epoch weights to 50% FLOPs, then
               EPOCHS - PRUNE_AT epochs of fine-tuning (the same total epochs as the others)
    timing     time per training step: the Trainer against a minimal hand-written loop on
               the same batches, alternating chunks of steps (target: Trainer >= 0.9x)
    latency    the three trained models timed side by side, interleaved in one process
               (batch 8, 1 thread): the speedups; a model not yet saved is rebuilt from its
               arm's final checkpoint (no training)

The network is PointNet++ SSG at CPU scale (`--width`, centroids `--npoints`,
neighbours `--nsamples`; the paper's are 1.0, 512/128, 32/64), said so in the
results. Reported per arm: overall accuracy, mean class accuracy, FLOPs
(MACs of the shared MLPs and FC layers; sampling and grouping are not
multiply-adds and are not counted), params and CPU latency (batch 8, 1 thread).

Full run (about an hour per arm on one free core; not feasible on the shared machine
while other training runs hold both cores):

    PRUNELAB_DATA=../shared/data bench/slot .venv/bin/python bench/pointnet_modelnet.py \\
        dense chex uniform timing --epochs 12

Each arm writes bench/results/pointnet_runs/<arm>.json (`--tag` prefixes the name);
`report` writes their table to bench/results/pointnet_runs/<tag>table.md.
`--steps-per-epoch` and `--test-samples` cut a run short for a smoke test.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunelab import io, models
from prunelab.atomic import atomic_write_bytes
from prunelab.data import build_data
from prunelab.data.point_loader import PointCloudLoader
from prunelab.methods import PruneTask, get_method
from prunelab.metrics import count
from prunelab.report import measure
from prunelab.train import Callback, TrainConfig, Trainer, evaluate_model, task_for

RESULTS = Path("bench/results/pointnet_runs")
RUNS = Path("runs/pointnet_bench")
CHEX = {"delta0": 0.3, "interval": 1, "t_max": 0.72, "regrow": "sample"}


def recipe(args: argparse.Namespace, epochs: int, run_dir: Path | None) -> TrainConfig:
    """The one recipe of every arm; with a run folder it resumes from the checkpoint there
    (a method's task puts each of its trainings in a subfolder of it)."""
    return TrainConfig(
        epochs=epochs, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=1e-4, schedule="cosine", warmup_epochs=min(1.0, epochs / 4),
        steps_per_epoch=args.steps_per_epoch, eval_every=max(epochs, 1), seed=args.seed,
        threads=int(os.environ.get("PRUNELAB_THREADS", "1")), quiet=args.quiet,
        run_dir=str(run_dir) if run_dir else None, resume=run_dir is not None,
    )  # fmt: skip


def make_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    return models.create("pointnet2_ssg", num_classes=10, width=args.width,
                         npoints=tuple(args.npoints), nsamples=tuple(args.nsamples))


def make_data(args: argparse.Namespace) -> Any:
    data = build_data("modelnet10", batch_size=32, seed=args.seed)
    if args.test_samples:  # a fixed, class-balanced-by-order slice for smoke runs
        keep = torch.linspace(0, data.test.num_samples - 1, args.test_samples).long()
        data.test = PointCloudLoader(data.test.points, data.test.labels, batch_size=32,
                                     indices=keep)
    return data


class KeepWeights(Callback):
    """Saves the model's weights after epoch `epoch` (the uniform arm prunes those) at once,
    so a dense run resumed past that epoch still has them."""

    def __init__(self, epoch: int, path: Path) -> None:
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if epoch + 1 == self.epoch:
            state = copy.deepcopy(trainer.model.state_dict())
            atomic_write_bytes(self.path, lambda f: torch.save(state, f))


def describe(model: torch.nn.Module, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Test metrics, cost and latency of a trained model."""
    model = model.cpu().eval()
    metrics = evaluate_model(model, data.test, task_for(data))
    x = torch.zeros(1, *data.effective_input_size)
    cost = count(model, x)
    row = measure({"m": model}, {"m": x}, {"m": None}, batch=8, threads=1,
                  repeats=args.latency_repeats)[0]
    return {"overall_acc": metrics["overall_acc"], "mean_class_acc": metrics["mean_class_acc"],
            "test_samples": metrics["samples"], "flops": cost.flops, "params": cost.params,
            "latency_ms": row.latency_ms}


def model_file(args: argparse.Namespace, arm: str) -> Path:
    return RUNS / f"{args.tag}{arm}_model.pt"


def train_dense(args: argparse.Namespace) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    data, model = make_data(args), make_model(args)
    keep = KeepWeights(args.prune_at, RUNS / f"{args.tag}dense_epoch{args.prune_at}.pt")
    # checkpointed every epoch: a killed dense run resumes where it stopped
    trainer = Trainer(model, data, recipe(args, args.epochs, RUNS / f"{args.tag}dense"), [keep])
    trainer.fit()
    io.save(model, model_file(args, "dense"))
    return model, trainer.history


def run_dense(args: argparse.Namespace) -> dict[str, Any]:
    model, history = train_dense(args)
    return {**describe(model, make_data(args), args), "history": history}


def train_method(args: argparse.Namespace, name: str) -> tuple[torch.nn.Module, Any, float]:
    """(pruned model, its PruneResult, dense FLOPs); the training resumes from its checkpoint."""
    data, model = make_data(args), make_model(args)
    if name == "uniform":
        start = RUNS / f"{args.tag}dense_epoch{args.prune_at}.pt"
        if not start.exists():
            raise SystemExit(f"uniform prunes the dense arm's weights: run `dense` first ({start})")
        model.load_state_dict(torch.load(start, weights_only=True))
        epochs, method = args.epochs - args.prune_at, get_method("uniform")(criterion="l1")
    else:
        epochs, method = args.epochs, get_method("chex")(**CHEX)
    run_dir = RUNS / f"{args.tag}{name}"
    task = PruneTask(model=model, data=data, target=0.5, metric="flops",
                     train=recipe(args, epochs, run_dir), run_dir=run_dir, seed=args.seed,
                     quiet=args.quiet)
    dense_flops = count(model, torch.zeros(1, *data.effective_input_size)).flops
    result = method.run(task)
    io.save(result.model, model_file(args, name))
    return result.model, result, dense_flops


def run_method(args: argparse.Namespace, name: str) -> dict[str, Any]:
    data = make_data(args)
    _, result, dense_flops = train_method(args, name)
    epochs = args.epochs - args.prune_at if name == "uniform" else args.epochs
    out = describe(result.model, data, args)
    return {**out, "flops_ratio": out["flops"] / dense_flops, "history": result.history,
            "epochs_trained": epochs}


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    """The trained models side by side: median latency and speedup against dense."""
    trained = {}
    for arm in ("dense", "chex", "uniform"):
        path = model_file(args, arm)
        if not path.exists():  # finished before models were saved: rebuild from the checkpoint
            if arm == "dense":
                train_dense(args)
            else:
                train_method(args, arm)
        trained[arm] = io.load(path).eval()
    x = torch.zeros(1, *make_data(args).effective_input_size)
    rows = measure(trained, dict.fromkeys(trained, x), dict.fromkeys(trained),
                   batch=8, threads=1, repeats=args.latency_repeats)
    ms = {arm: row.latency_ms for arm, row in zip(trained, rows, strict=True)}
    return {"latency_ms": ms, "speedup": {a: ms["dense"] / v for a, v in ms.items()},
            "batch": 8, "threads": 1, "repeats": args.latency_repeats}


def minimal_steps(model: torch.nn.Module, loader: Any, steps: int, opt: torch.optim.Optimizer
                  ) -> float:
    """Seconds for the plainest correct training loop over `steps` batches of `loader`."""
    model.train()
    start = time.perf_counter()
    for x, y in itertools.islice(loader, steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def run_timing(args: argparse.Namespace) -> dict[str, Any]:
    data = make_data(args)
    steps = args.timing_steps
    minimal_model, trainer_model = make_model(args), make_model(args)
    opt = torch.optim.SGD(minimal_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ours, mins = [], []
    for _ in range(args.timing_rounds):  # alternate so drift in machine load hits both
        mins.append(minimal_steps(minimal_model, data.train, steps, opt) / steps)
        cfg = TrainConfig(epochs=1, steps_per_epoch=steps, lr=0.05, momentum=0.9,
                          weight_decay=1e-4, schedule="constant", quiet=True)
        trainer = Trainer(trainer_model, data, cfg)
        trainer.fit()
        ours.append(32 / trainer.history[-1]["img_per_s"])  # s/step of the training part
    m, o = statistics.median(mins), statistics.median(ours)
    return {"minimal_s_per_step": m, "trainer_s_per_step": o, "speed_ratio": m / o,
            "rounds": args.timing_rounds, "steps": steps, "minimal_all": mins, "trainer_all": ours}


def write_report(tag: str, out: Path) -> str:
    """The markdown table of the finished arms' JSON files (numbers as measured)."""
    rows = ["| arm | overall acc. (%) | mean class acc. (%) | FLOPs (MACs) | params | "
            "CPU latency, batch 8, 1 thread | epochs | wall time |",
            "|---|---|---|---|---|---|---|---|"]
    files = {a: RESULTS / f"{tag}{a}.json"
             for a in ("dense", "chex", "uniform", "timing", "latency")}
    done = {a: json.loads(f.read_text()) for a, f in files.items() if f.exists()}
    base = done.get("dense", {}).get("flops")
    for arm in ("dense", "chex", "uniform"):
        r = done.get(arm)
        if r is None:
            continue
        share = f" ({r['flops'] / base:.0%})" if base else ""
        epochs = r.get("epochs_trained", r["settings"]["epochs"])
        rows.append(f"| {arm} | {r['overall_acc']:.2f} | {r['mean_class_acc']:.2f} | "
                    f"{r['flops'] / 1e6:.1f} M{share} | {r['params'] / 1e6:.3f} M | "
                    f"{r['latency_ms']:.0f} ms | {epochs} | {r['seconds']:.0f} s |")
    if "timing" in done:
        t = done["timing"]
        rows += ["", f"Time per training step (batch 32, median of {t['rounds']} rounds of "
                 f"{t['steps']} steps): minimal loop {t['minimal_s_per_step']:.2f} s, Trainer "
                 f"{t['trainer_s_per_step']:.2f} s, Trainer speed {t['speed_ratio']:.2f}x "
                 "the minimal loop's."]
    if "latency" in done:
        t = done["latency"]
        rows += ["", f"Side by side (batch {t['batch']}, {t['threads']} thread, interleaved, "
                 f"median of {t['repeats']}): " + ", ".join(
                     f"{a} {ms:.1f} ms ({t['speedup'][a]:.2f}x)"
                     for a, ms in t["latency_ms"].items())]
    settings = next(iter(done.values()))["settings"] if done else {}
    text = "\n".join(rows) + f"\n\nSettings: `{json.dumps(settings)}`\n"
    out.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="+",
                    choices=["dense", "chex", "uniform", "timing", "latency", "report"])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--prune-at", type=int, default=None, help="default: 2/3 of the epochs")
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--test-samples", type=int, default=0, help="0: the whole test split")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--npoints", type=int, nargs=2, default=[128, 32])
    ap.add_argument("--nsamples", type=int, nargs=2, default=[16, 32])
    ap.add_argument("--latency-repeats", type=int, default=20)
    ap.add_argument("--timing-steps", type=int, default=10)
    ap.add_argument("--timing-rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="prefix of the result files (e.g. smoke_)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    args.prune_at = args.prune_at or max(1, round(args.epochs * 2 / 3))
    torch.set_num_threads(int(os.environ.get("PRUNELAB_THREADS", "1")))
    RESULTS.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("arms", "quiet")}
    for arm in args.arms:
        t0 = time.perf_counter()
        if arm == "report":
            print(write_report(args.tag, RESULTS / f"{args.tag}table.md"))
            continue
        if arm == "dense":
            result = run_dense(args)
        elif arm == "timing":
            result = run_timing(args)
        elif arm == "latency":
            result = run_latency(args)
        else:
            result = run_method(args, arm)
        result.update(arm=arm, seconds=time.perf_counter() - t0, settings=settings,
                      threads=torch.get_num_threads())
        path = RESULTS / f"{args.tag}{arm}.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        shown = {k: result[k] for k in ("overall_acc", "mean_class_acc", "flops", "latency_ms",
                                        "speed_ratio") if k in result}
        print(f"{arm}: {shown} ({result['seconds']:.0f} s) -> {path}", flush=True)


if __name__ == "__main__":
    main()
