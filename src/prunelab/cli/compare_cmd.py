"""`prunelab compare CONFIG`: arms at one cost target and one training budget, one leaderboard.

A compare configuration:

    name: posttrain-resnet20          # the folder runs/compare-<name> unless run_dir is given
    title: ...                        # the leaderboard's heading
    base: {...}                       # an ordinary `prunelab prune` configuration
    budget_epochs: 15                 # training epochs every arm must spend (checked)
    baseline: uniform-l1-r8           # the arm the Δ column compares with
    seeds: [0]                        # every arm is run once per seed
    distill: {teacher: dense, weight: 0.9, temperature: 4}   # what "+kd" twins add
    kd: none                          # default for arms: none | only | both (+kd twin)
    arms:
      uniform-l1-r8: {method: {name: uniform, criterion: l1, round_to: 8}, kd: both}
      dense25-uniform: {pretrain: {epochs: 25}, method: {...}}   # dense training first
      long-arm: {train: {epochs: 30}, budget_note: why this arm may train longer}

An arm's settings merge into `base`; `pretrain` trains the dense model first
(`prunelab train` with the base recipe and these train overrides) and prunes
the result. Equal budget is checked before anything runs: pretrain epochs
plus the method's training epochs must equal `budget_epochs` unless the arm
says why in `budget_note`. Search work (candidate scoring, data collection)
is not training budget; it is its own column, in epochs of dense training.

Each run of an arm is an ordinary `prune` run folder, `arms/<arm>-s<seed>`;
a finished one (its summary.json exists) is never rerun, an interrupted one
resumes from its last epoch checkpoint, and a lock file keeps two compare
processes (`--arms a,b` in one, `--arms c` in another) off the same arm.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunelab import io
from prunelab.atomic import atomic_write_text
from prunelab.cli.config import TOP_LEVEL, dump, load_yaml, merge, parse_override
from prunelab.cli.setup import checkpoint_path, make_data, say
from prunelab.errors import ConfigError, CorruptFileError
from prunelab.latency_table import LatencySpec, measured_ratio
from prunelab.methods import get_method
from prunelab.metrics import measure_train_step
from prunelab.report import SUMMARY_NAME, measure, read_summary
from prunelab.report.leaderboard import ArmRun, write_leaderboard
from prunelab.train import TrainConfig
from prunelab.train.checkpoint import CHECKPOINT_NAME
from prunelab.train.distill import check_distill

COMPARE_KEYS = {"name", "title", "base", "budget_epochs", "baseline", "seeds", "distill", "kd",
                "arms", "run_dir", "budget_tolerance", "latency_tolerance"}  # fmt: skip
ARM_KEYS = {"pretrain", "budget_note", "kd", "seeds"}
KD_CHOICES = ("none", "only", "both")
KD_SUFFIX = "+kd"
LOCK_NAME = ".compare.lock"
ARM_RECORD = "compare.json"
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class ArmSpec:
    """One run to do: an arm at one seed, as a full prune configuration."""

    arm: str
    seed: int
    config: dict[str, Any]
    pretrain: dict[str, Any] | None
    train_epochs: float
    distilled: bool

    @property
    def folder_name(self) -> str:
        return f"{self.arm}-s{self.seed}"


def load_compare(path: str, overrides: list[str]) -> dict[str, Any]:
    """The compare configuration file with `key.sub=value` overrides, checked by name."""
    config = load_yaml(path)
    for o in overrides:
        config = merge(config, parse_override(o))
    unknown = sorted(set(config) - COMPARE_KEYS)
    if unknown:
        raise ConfigError(f"unknown compare key(s) {unknown}; known: {sorted(COMPARE_KEYS)}")
    for key in ("base", "arms"):
        if not isinstance(config.get(key), dict) or not config[key]:
            raise ConfigError(f"compare config {key!r} must be a non-empty mapping")
    if config.get("budget_epochs") is None:
        raise ConfigError("compare config needs budget_epochs (the training every arm gets)")
    return config


def expand_arms(config: dict[str, Any], seeds: list[int] | None = None) -> list[ArmSpec]:
    """Every (arm, seed) run with its merged prune configuration, budget checked."""
    base = config["base"]
    unknown = sorted(set(base) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"compare base has unknown key(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    distill = check_distill(config.get("distill") or {})
    budget = float(config["budget_epochs"])
    default_kd = str(config.get("kd", "none"))
    specs: list[ArmSpec] = []
    for arm, settings in config["arms"].items():
        settings = dict(settings or {})
        if not _ARM_NAME.match(str(arm)):
            raise ConfigError(f"arm name {arm!r}: use letters, digits and _ . + - only")
        kd = str(settings.pop("kd", default_kd))
        if kd not in KD_CHOICES:
            raise ConfigError(f"arm {arm}: kd must be one of {KD_CHOICES}, got {kd!r}")
        pretrain = settings.pop("pretrain", None)
        note = settings.pop("budget_note", None)
        arm_seeds = settings.pop("seeds", None) or config.get("seeds") or [0]
        bad = sorted(set(settings) - TOP_LEVEL)
        if bad:
            raise ConfigError(f"arm {arm} has unknown key(s) {bad}; "
                              f"known: {sorted(TOP_LEVEL | ARM_KEYS)}")  # fmt: skip
        merged = merge(base, settings)
        if isinstance(merged.get("method"), str):
            merged["method"] = {"name": merged["method"]}
        if "method" in settings and isinstance(settings["method"], dict):
            merged["method"] = copy.deepcopy(settings["method"])  # no options of base's method
        epochs = _arm_epochs(str(arm), merged, pretrain)
        if abs(epochs - budget) > 1e-9 and not note:
            raise ConfigError(
                f"arm {arm} trains {epochs:g} epochs but the compare's budget is {budget:g}: "
                "match it, or say why in the arm's budget_note"
            )
        variants = {"none": [False], "only": [True], "both": [False, True]}[kd]
        for distilled in variants:
            cfg = copy.deepcopy(merged)
            name = f"{arm}{KD_SUFFIX}" if distilled else str(arm)
            if distilled:
                cfg.setdefault("train", {})["distill"] = dict(distill)
            for seed in seeds if seeds is not None else arm_seeds:
                run = copy.deepcopy(cfg)
                run["seed"] = int(seed)
                specs.append(ArmSpec(name, int(seed), run, pretrain, epochs, distilled))
    return specs


def _arm_epochs(arm: str, config: dict[str, Any], pretrain: dict[str, Any] | None) -> float:
    method_cfg = dict(config.get("method") or {})
    name = method_cfg.pop("name", None)
    if not name:
        raise ConfigError(f"arm {arm} names no method (method.name)")
    method = get_method(name)(**method_cfg)
    train = TrainConfig.from_dict(config.get("train") or {})
    epochs = method.training_epochs(train)
    if pretrain is not None:
        if not isinstance(pretrain, dict):
            raise ConfigError(f"arm {arm}: pretrain must be a mapping of train settings")
        epochs += TrainConfig.from_dict(merge(config.get("train") or {}, pretrain)).epochs
    return epochs


def run_compare(
    path: str,
    overrides: list[str],
    arms: list[str] | None = None,
    seeds: list[int] | None = None,
    quiet: bool = False,
    run_dir: str | None = None,
    report_only: bool = False,
) -> tuple[str, list[str]]:
    """Run the selected arms (all by default), then write the leaderboard of every finished run.

    Returns the leaderboard table and the names of finished arms that missed the
    cost target (off budget).
    """
    config = load_compare(path, overrides)
    specs = expand_arms(config, seeds)
    known = sorted({s.arm for s in specs})
    if arms:
        missing = sorted(set(arms) - set(known))
        if missing:
            raise ConfigError(f"no arm(s) {missing} in {path}; arms: {known}")
    chosen = [s for s in specs if not arms or s.arm in arms]
    out = Path(run_dir or config.get("run_dir") or f"runs/compare-{config.get('name', 'compare')}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.yaml", dump(config))
    log = {"quiet": quiet}
    if not report_only:
        for i, spec in enumerate(chosen, 1):
            folder = out / "arms" / spec.folder_name
            if (folder / SUMMARY_NAME).is_file():
                say(log, f"[{i}/{len(chosen)}] {spec.folder_name}: finished, not rerun")
                continue
            with _arm_lock(folder) as free:
                if not free:
                    say(log, f"[{i}/{len(chosen)}] {spec.folder_name}: running in another "
                             "process, skipped")  # fmt: skip
                    continue
                say(log, f"[{i}/{len(chosen)}] {spec.folder_name}: running -> {folder}")
                _run_arm(spec, folder, quiet)
    # the leaderboard lists every finished run: any seed an arm folder holds, --seeds or not
    found = {int(m.group(1)) for p in (out / "arms").glob("*-s*")
             if (m := re.search(r"-s(\d+)$", p.name))}  # fmt: skip
    listed = {(s.arm, s.seed) for s in specs}
    # (_leaderboard keeps the finished ones)
    everything = specs + [s for s in expand_arms(config, sorted(found))
                          if (s.arm, s.seed) not in listed]  # fmt: skip
    return _leaderboard(config, everything, out, quiet)


@contextlib.contextmanager
def _arm_lock(folder: Path) -> Iterator[bool]:
    """An exclusive lock file naming this process; a stale one (dead process) is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    if lock.exists():
        try:
            pid = int(lock.read_text().strip() or 0)
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            alive = False
        if alive:
            yield False
            return
        lock.unlink(missing_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        yield False
        return
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def _run_arm(spec: ArmSpec, folder: Path, quiet: bool) -> None:
    from prunelab.cli.prune_cmd import run_prune
    from prunelab.cli.train_cmd import run_train

    config = copy.deepcopy(spec.config)
    record: dict[str, Any] = {"arm": spec.arm, "seed": spec.seed, "distilled": spec.distilled,
                              "train_epochs": spec.train_epochs}  # fmt: skip
    if spec.pretrain is not None:
        pre_dir = folder / "pretrain"
        if not (pre_dir / SUMMARY_NAME).is_file():
            pre = {k: v for k, v in config.items() if k not in ("method", "checkpoint", "target",
                                                                  "metric", "reference")}
            # resume only what an earlier process started: `train` refuses --resume on nothing
            started = (pre_dir / CHECKPOINT_NAME).is_file()
            pre["train"] = merge({k: v for k, v in (config.get("train") or {}).items()
                                  if k != "distill"}, {**spec.pretrain, "resume": started})
            pre.update(run_dir=str(pre_dir), quiet=quiet)
            run_train(pre)
        pre_summary = read_summary(pre_dir)
        record["pretrain_seconds"] = pre_summary["seconds"]
        config["checkpoint"] = str(pre_dir / "model.pt")
    config["train"] = {**(config.get("train") or {}), "resume": True}
    config.update(run_dir=str(folder), quiet=quiet)
    summary = run_prune(config)
    search = float((summary.get("info") or {}).get("search_seconds") or 0.0)
    if search > 0:
        record["search_seconds"] = search
        record["dense_epoch_seconds"] = _dense_epoch_seconds(config)
    atomic_write_text(folder / ARM_RECORD, json.dumps(record, indent=1))


_DENSE_EPOCH_SECONDS: dict[str, float] = {}


def _dense_epoch_seconds(config: dict[str, Any]) -> float:
    """Wall time of one dense training epoch (the search cost unit), timed once per process."""
    key = json.dumps([config.get("checkpoint") or config.get("reference"), config.get("data"),
                      config.get("train")], sort_keys=True, default=str)  # fmt: skip
    if key not in _DENSE_EPOCH_SECONDS:
        _DENSE_EPOCH_SECONDS[key] = _time_dense_epoch(config)
    return _DENSE_EPOCH_SECONDS[key]


def _time_dense_epoch(config: dict[str, Any]) -> float:
    """One dense training epoch's wall time, from a few timed steps."""
    data = make_data(config)
    dense = io.load(checkpoint_path(str(config.get("checkpoint") or config.get("reference"))))
    train = TrainConfig.from_dict({k: v for k, v in (config.get("train") or {}).items()
                                   if k not in ("resume", "distill")})  # fmt: skip
    batch = train.batch_size or data.train.batch_size
    x = torch.randn(batch, *data.effective_input_size)
    y = torch.randint(0, data.num_classes, (batch,))
    stats = measure_train_step(dense, x, y, repeats=10, warmup=2, threads=train.threads,
                               channels_last=train.channels_last == "on")  # fmt: skip
    return stats.median_ms / 1000.0 * len(data.train)


def _budget_latency_ratio(dense: torch.nn.Module, model: torch.nn.Module,
                          spec: LatencySpec) -> float:  # fmt: skip
    """pruned / dense latency in the setting a latency budget names (batch, threads,
    runtime, layout), timed until the ratio is known (`measured_ratio`): the leaderboard's
    own timing puts every model in its faster layout, which is not what the budget said."""
    x = torch.zeros(1, *dense.prunelab_input_size)
    own = torch.zeros(1, *model.prunelab_input_size)
    ratio, _ = measured_ratio(dense, model, x, spec, pruned_input=own)
    return ratio


def _leaderboard(
    config: dict[str, Any], specs: list[ArmSpec], out: Path, quiet: bool
) -> tuple[str, list[str]]:
    """Collect every finished run, time all models side by side, write the leaderboard."""
    base = config["base"]
    target = float(base.get("target", 0.5))
    metric = str(base.get("metric", "flops"))
    arm_metrics: dict[str, tuple[str, float]] = {}  # an arm may budget in its own metric
    tolerance = float(config.get("budget_tolerance", 0.02))
    # a timing is noisier than a count: latency budgets get issue 20's 5%
    latency_tolerance = float(config.get("latency_tolerance", 0.05))
    finished = [(s, out / "arms" / s.folder_name) for s in specs
                if (out / "arms" / s.folder_name / SUMMARY_NAME).is_file()]  # fmt: skip
    runs: list[ArmRun] = []
    models: dict[str, torch.nn.Module] = {}
    inputs: dict[str, torch.Tensor] = {}
    dense: dict[str, Any] = {}
    budget_specs: dict[str, LatencySpec] = {}
    for spec, folder in finished:
        summary = read_summary(folder)
        extra = _read_record(folder)
        first, last = summary["rows"][0], summary["rows"][-1]
        if not dense and first.get("top1") is not None:
            dense = {k: first[k] for k in ("top1", "flops", "params")}
        arm_metric = str(spec.config.get("metric", metric))
        arm_target = float(spec.config.get("target", target))
        arm_metrics[spec.arm] = (arm_metric, arm_target)
        if arm_metric == "latency":
            budget_specs[spec.arm] = LatencySpec.from_config(spec.config.get("latency"))
        # a latency budget is checked below, against the leaderboard's own side-by-side timing
        key = arm_metric if arm_metric in ("flops", "params") else "flops"
        ratio = last[key] / max(first[key], 1) if arm_metric != "latency" else arm_target
        dense_epoch = extra.get("dense_epoch_seconds") or 0.0
        search = float(extra.get("search_seconds") or 0.0)
        runs.append(ArmRun(
            arm=spec.arm, seed=spec.seed, method=summary.get("method") or "-", top1=last["top1"],
            flops=last["flops"], params=last["params"], flops_ratio=last["flops"] / first["flops"],
            train_epochs=spec.train_epochs,
            wall_seconds=(summary["seconds"] + _earlier_processes_seconds(folder)
                          + float(extra.get("pretrain_seconds") or 0.0)),
            search_seconds=search, search_epochs=search / dense_epoch if dense_epoch else 0.0,
            latency_ms=last.get("latency_ms"), speedup=last.get("speedup"),
            on_budget=abs(ratio / arm_target - 1.0) <= tolerance, distilled=spec.distilled,
            run_dir=str(folder),
        ))  # fmt: skip
        if spec.seed == min(s.seed for s in specs if s.arm == spec.arm):
            model = io.load(folder / "model.pt")
            models[spec.arm] = model
            inputs[spec.arm] = torch.zeros(1, *model.prunelab_input_size)
    lat = {"batch": 8, "threads": 2, "repeats": 20, **(base.get("latency") or {})}
    plural = "" if int(lat["threads"]) == 1 else "s"
    timing = f"batch {lat['batch']}, {lat['threads']} thread{plural}"
    notes = [f"target {target:g} of the dense model's {metric}; an arm more than "
             f"{tolerance:.0%} off it is marked off budget and ranked last",
             f"training budget {float(config['budget_epochs']):g} epochs per arm (pretraining "
             "included); search cost in epochs of dense training wall time"]  # fmt: skip
    spec_dense = base.get("checkpoint") or base.get("reference")
    if models and spec_dense:
        say({"quiet": quiet}, f"timing {len(models)} arm model(s) and dense together ({timing})")
        dense_model = io.load(checkpoint_path(str(spec_dense)))
        all_models = {"dense": dense_model, **models}
        all_inputs = {"dense": torch.zeros(1, *dense_model.prunelab_input_size),
                      **inputs}  # fmt: skip
        rows = measure(all_models, all_inputs, {k: None for k in all_models},
                       batch=int(lat["batch"]), threads=int(lat["threads"]),
                       repeats=int(lat["repeats"]))  # fmt: skip
        by_label = {r.label: r for r in rows}
        dense.setdefault("flops", by_label["dense"].flops)
        dense.setdefault("params", by_label["dense"].params)
        dense["latency_ms"] = by_label["dense"].latency_ms
        for r in runs:
            if r.arm in by_label:
                r.latency_ms, r.speedup = by_label[r.arm].latency_ms, by_label[r.arm].speedup
            arm_metric, arm_target = arm_metrics[r.arm]
            if arm_metric == "latency" and r.arm in models:
                ratio = _budget_latency_ratio(dense_model, models[r.arm], budget_specs[r.arm])
                r.on_budget = abs(ratio / arm_target - 1.0) <= latency_tolerance
                where = ", ".join(f"{k} {v}" for k, v in budget_specs[r.arm].key().items())
                notes.append(f"{r.arm}: {ratio:.3f} of dense latency where its budget is set "
                             f"({where})")  # fmt: skip
        notes.append("latency: every arm's model and the dense model timed round-robin in one "
                     "run, each in its faster memory layout")  # fmt: skip
    own = sorted(
        f"{arm} ({m} {t:g}, within {latency_tolerance if m == 'latency' else tolerance:.0%})"
        for arm, (m, t) in arm_metrics.items()
        if (m, t) != (metric, target)
    )
    if own:
        notes.append("arms with their own budget: " + ", ".join(own))
    title = str(config.get("title") or config.get("name") or "compare")
    baseline = config.get("baseline")
    table, _ = write_leaderboard(out, title, runs, dense, baseline, timing, notes)
    off = sorted({r.arm for r in runs if not r.on_budget})
    if not quiet:
        print(table)
        print(f"\nleaderboard: {out / 'leaderboard.md'} ({len(runs)} finished run(s) of "
              f"{len(specs)})")  # fmt: skip
    return table, off


def _earlier_processes_seconds(folder: Path) -> float:
    """Training time an arm spent in processes before the one that finished it.

    A resumed run's summary times only its last process; the epochs that earlier
    processes completed (and the resume kept) are added from the training logs.
    Epochs redone after a resume count once, as the run that kept them.
    """
    total = 0.0
    for log in folder.glob("*/metrics.jsonl"):
        kept: dict[int, tuple[int, float]] = {}  # epoch -> (process index, seconds)
        process = -1
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("kind") == "start":
                process += 1
                resumed_at = int(record.get("epoch") or 0) if record.get("resumed") else 0
                kept = {e: v for e, v in kept.items() if e <= resumed_at}
            elif record.get("kind") == "epoch" and "time" in record:
                kept[int(record["epoch"])] = (process, float(record["time"]))
        total += sum(t for p, t in kept.values() if p < process)
    return total


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / ARM_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from exc
