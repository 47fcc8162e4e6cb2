"""The training loop.

    for epoch:
        for step:  forward -> loss (+ callbacks' extra losses) -> backward
                   -> callbacks edit gradients -> lr for this step -> optimizer step
        evaluate, log, checkpoint

Everything else (schedules, checkpoint files, DDP, progress) lives in its own
small module; methods hook in through `Callback` (see callbacks.py for the
order of hooks). What a batch, the loss and the metrics are comes from the
`Task` (tasks.py; classification unless the data names another). Metrics are
accumulated as device tensors and read once per epoch, so the loop adds no
per-step device syncs.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.data.registry import DataBundle, Loader
from prunelab.errors import ConfigError, CorruptFileError
from prunelab.metrics import best_memory_format
from prunelab.train import distributed as D
from prunelab.train.aux_outputs import aux_loss, main_logits, training_loss
from prunelab.train.callbacks import Callback
from prunelab.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from prunelab.train.config import TrainConfig
from prunelab.train.optim import LRSchedule, build_optimizer, param_groups
from prunelab.train.progress import METRICS_NAME, MetricsLog, Progress
from prunelab.train.tasks import Task, task_for


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this rank's GPU if there is one, else the CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device {spec!r}: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def resolve_amp(spec: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 (or fp16 where bf16 is missing) on CUDA for "auto"; off on CPU."""
    if spec == "off":
        return None
    if device.type != "cuda":
        if spec == "auto":
            return None
        raise ConfigError(f"amp={spec!r} needs a CUDA device (training on {device}); use amp=off")
    if spec == "bf16" or (spec == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


class Trainer:
    """Trains `model` on `data` according to `config`, calling `callbacks` at fixed points.

    Attributes callbacks may use: model (unwrapped), train_model (DDP-wrapped
    when distributed), optimizer, scheduler (LRSchedule), scaler, epoch
    (0-based current epoch; `config.epochs` after fit), global_step,
    steps_per_epoch, config, device, data, history (per-epoch records),
    dist (rank, world size), is_main, loss (last step's task loss tensor),
    task (what a batch, the loss and the metrics are; default: the data's task).
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        config: TrainConfig | None = None,
        callbacks: Iterable[Callback] = (),
        task: Task | None = None,
    ) -> None:
        self.config = cfg = config if config is not None else TrainConfig()
        self.task = task if task is not None else task_for(data)
        self.callbacks = list(callbacks)
        self.dist = D.init_distributed()
        self.is_main = self.dist.is_main
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.channels_last = self.task.channels_last and (cfg.channels_last == "on" or (
            cfg.channels_last == "auto" and self.device.type == "cuda"))
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self.data = data
        if cfg.batch_size is not None:
            data.train.batch_size = cfg.batch_size
        data.to(self.device)
        self.model = model
        n_batches = len(data.train)
        self.steps_per_epoch = min(n_batches, cfg.steps_per_epoch or n_batches)
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training set gives no full batch: {data.train.num_samples} samples, "
                f"batch {data.train.batch_size} x {self.dist.world_size} process(es)")
        self.global_batch = data.train.batch_size * self.dist.world_size
        self.base_lr = cfg.lr * (self.global_batch / cfg.lr_ref_batch if cfg.lr_ref_batch else 1.0)
        self.scheduler = LRSchedule(cfg, self.steps_per_epoch, self.base_lr)
        self.scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None)
        self.criterion = self.task.criterion(cfg)
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.loss: torch.Tensor | None = None
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else None
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME if self.run_dir else None
        self.progress = Progress(enabled=self.is_main and not cfg.quiet,
                                 every_seconds=cfg.progress_seconds)
        self.metrics_log = MetricsLog(None)
        self._pending: dict[str, Any] = {}
        self._in_epoch = False
        self.optimizer: torch.optim.Optimizer
        self.train_model: nn.Module
        if cfg.channels_last == "best" and self.task.channels_last:
            self.channels_last = self._faster_layout_is_channels_last(model, data)
        self._prepare_model(carry_state=False)

    def _faster_layout_is_channels_last(self, model: nn.Module, data: DataBundle) -> bool:
        """Time a few training steps in both memory layouts; rank 0 decides for all.

        Channel counts decide which layout is faster on a CPU (a pruned model
        can train slower in channels_last than the dense one), so this is a
        per-model choice. The timing uses a random batch, not the loader, so
        the data order is unaffected.
        """
        choice = None
        if self.is_main:
            batch = self.config.batch_size or data.train.batch_size
            x = torch.randn(batch, *data.effective_input_size, device=self.device)
            y = self.task.example_targets(batch, self.device)
            fmt = best_memory_format(model.to(self.device), x, train=True, repeats=3, warmup=1,
                                     targets=y, loss_fn=training_loss(self.criterion))  # fmt: skip
            choice = fmt == torch.channels_last
            self.progress.print(f"memory layout: {'channels_last' if choice else 'NCHW'} (timed)")
        return bool(D.broadcast_object(choice))

    # ------------------------------------------------------------ model prep
    def _prepare_model(self, carry_state: bool) -> None:
        """Device, memory format, optimizer and DDP wrapper for the current model."""
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        groups = param_groups(self.model, self.config.weight_decay, self.config.no_decay_bn_bias)
        for cb in self.callbacks:
            groups = cb.param_groups(self, groups)
        new = build_optimizer(groups, self.config, self.base_lr)
        if carry_state:
            old = self.optimizer
            for group in new.param_groups:
                for p in group["params"]:
                    st = old.state.get(p)
                    if st and all(not isinstance(v, torch.Tensor) or v.ndim == 0
                                  or v.shape == p.shape for v in st.values()):
                        new.state[p] = st
        self.optimizer = new
        self.scheduler.apply(self.optimizer, self.global_step)
        self.train_model = D.wrap_ddp(self.model, self.device, sync_bn=self.config.sync_bn,
                                      find_unused_parameters=self.config.find_unused_parameters)

    def rebuild_optimizer(self) -> None:
        """Call after changing the model's parameters (surgery, module replacement).

        Makes a new optimizer over the current parameters at the current point of
        the lr schedule, keeping momentum/Adam state of parameters that survived
        unchanged in shape, and re-wraps DDP.
        """
        self._prepare_model(carry_state=True)

    # ------------------------------------------------------------------- API
    @property
    def lr(self) -> float:
        """The main learning rate at the current step."""
        return self.scheduler.lr(self.global_step)

    def log(self, **metrics: Any) -> None:
        """Add fields to the current epoch's log record (or a separate record outside epochs)."""
        if self._in_epoch:
            self._pending.update(metrics)
        elif self.is_main:
            self.metrics_log.write({"kind": "log", "epoch": self.epoch,
                                    "step": self.global_step, **metrics})

    def fit(self) -> dict[str, Any]:
        """Train for `config.epochs` (continuing from the checkpoint if `config.resume`).

        Returns the final metrics: the task's test metrics (classification:
        top1/top5 in percent and loss), the last epoch's train loss and train
        metric (train_top1), epochs, steps and wall time.
        """
        cfg = self.config
        seed_everything(cfg.seed + self.dist.rank)
        for cb in self.callbacks:
            cb.on_train_start(self)
        resumed = False
        if cfg.resume and self.checkpoint_path is not None:
            if self.checkpoint_path.exists():
                self.load_checkpoint(self.checkpoint_path)
                resumed = True
            else:
                self.progress.print(f"no checkpoint at {self.checkpoint_path}: starting fresh")
        if self.is_main and self.run_dir is not None:
            self.metrics_log = MetricsLog(self.run_dir / METRICS_NAME, fresh=not resumed)
            if resumed:
                self.metrics_log.drop_epochs_after(self.epoch)
            self.metrics_log.write({"kind": "start", "resumed": resumed, "epoch": self.epoch,
                                    "step": self.global_step, "world_size": self.dist.world_size,
                                    "device": str(self.device), "global_batch": self.global_batch,
                                    "base_lr": self.base_lr, "config": cfg.to_dict(),
                                    "data": self._data_description()})
        if resumed:
            self.progress.print(f"resumed from {self.checkpoint_path} at epoch {self.epoch}, "
                                f"step {self.global_step}")
        t_fit = time.perf_counter()
        epoch_times: list[float] = []
        for epoch in range(self.epoch, cfg.epochs):
            t0 = time.perf_counter()
            self.epoch = epoch
            self._in_epoch = True
            record = self._train_epoch(epoch)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                metrics = self.evaluate()
                record.update({f"test_{k}": v for k, v in metrics.items() if k != "samples"})
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, record)
            self._in_epoch = False
            record.update(self._pending)
            self._pending = {}
            record["time"] = time.perf_counter() - t0
            self.history.append(record)
            self.epoch = epoch + 1
            epoch_times.append(record["time"])
            if self.is_main:
                self.metrics_log.write({"kind": "epoch", **record})
                eta = (sum(epoch_times) / len(epoch_times)) * (cfg.epochs - epoch - 1)
                self.progress.epoch_line(record, cfg.epochs, eta, self.task.metrics,
                                         self.task.train_metric)
            if self.checkpoint_path is not None and (
                    (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
                self.save_checkpoint()
        self.epoch = cfg.epochs
        for cb in self.callbacks:
            cb.on_train_end(self)
        final = self._final_metrics(time.perf_counter() - t_fit)
        if self.is_main:
            self.metrics_log.write({"kind": "end", **final})
        return final

    def _data_description(self) -> dict[str, Any] | str:
        describe = getattr(self.data, "describe", None)  # bundles built by hand may lack it
        return describe() if callable(describe) else repr(self.data)

    def _final_metrics(self, seconds: float) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        names = self.task.metrics
        if f"test_{names[0]}" in last:
            test = {k: last[f"test_{k}"] for k in names}
        else:
            ev = self.evaluate(log=False)
            test = {k: ev[k] for k in names}
        final = {**test, "train_loss": last.get("train_loss")}
        if self.task.train_metric is not None:
            train_key = f"train_{self.task.train_metric}"
            final[train_key] = last.get(train_key)
        return {**final, "epochs": self.epoch, "steps": self.global_step, "time": seconds}

    # ------------------------------------------------------------ one epoch
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        model, opt, loader = self.train_model, self.optimizer, self.data.train
        model.train()
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)
        # a callback may have rebuilt the optimizer / re-wrapped the model
        model, opt = self.train_model, self.optimizer
        dev, task = self.device, self.task
        loss_sum = torch.zeros((), device=dev)
        extra_sum = torch.zeros((), device=dev)
        meter = task.train_meter(dev)
        seen = 0
        has_extra = False
        total = self.steps_per_epoch
        self.progress.start_epoch()
        t0 = time.perf_counter()
        for i, batch in enumerate(itertools.islice(loader, total)):
            x, y = task.prepare(batch, dev, self.channels_last)
            n_batch = task.batch_size(y)
            for cb in self.callbacks:
                cb.on_step_start(self, (x, y))
            if opt is not self.optimizer or model is not self.train_model:
                model, opt = self.train_model, self.optimizer
            self.scheduler.apply(opt, self.global_step)
            with self._autocast():
                raw = task.forward(model, x, y)
                out = main_logits(raw)
                loss = self.criterion(out, y)
                extra_aux = aux_loss(raw, y, self.criterion)
                full = loss if extra_aux is None else loss + extra_aux
                for cb in self.callbacks:
                    extra = cb.extra_loss(self, out, y)
                    if extra is not None:
                        full = full + extra
                        extra_sum += extra.detach().float() * n_batch
                        has_extra = True
            opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(full).backward()
                self.scaler.unscale_(opt)
            else:
                full.backward()
            for cb in self.callbacks:
                cb.after_backward(self)
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            self.global_step += 1
            self.loss = loss.detach()
            for cb in self.callbacks:
                cb.on_step_end(self)
            with torch.no_grad():
                loss_sum += self.loss.float() * n_batch
                meter.update(out, y)
            seen += n_batch
            if self.progress.due(i + 1, total):
                self.progress.step_line(epoch + 1, cfg.epochs, i + 1, total,
                                        loss_sum.item() / max(seen, 1),
                                        seen * self.dist.world_size)
        elapsed = time.perf_counter() - t0
        sums = torch.stack([loss_sum.float(), extra_sum.float(),
                            torch.tensor(float(seen), device=dev)])
        loss_total, extra_total, n = D.all_reduce_sum(sums).tolist()
        n = max(n, 1.0)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.global_step,
            "lr": self.scheduler.lr(max(self.global_step - 1, 0)),  # of the last step
            "train_loss": loss_total / n,
            **{f"train_{k}": v for k, v in meter.compute().items()},
        }
        if has_extra:
            record["train_extra_loss"] = extra_total / n
        record["img_per_s"] = n / elapsed if elapsed > 0 else math.nan
        return record

    # ----------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, loader: Loader | None = None, *, log: bool = True) -> dict[str, float]:
        """The task's metrics on `loader` (default: test); classification: top1/top5 %, loss.

        Under DDP each rank evaluates its shard and the sums are all-reduced, so
        every rank returns the metrics of the whole set. Called outside an epoch
        with `log=True`, the result is also written as an "eval" log record.
        """
        loader = self.data.test if loader is None else loader
        model = self.model
        for cb in self.callbacks:
            cb.before_evaluate(self)
        if self.dist.enabled:
            D.broadcast_buffers(model)
        was_training = model.training
        model.eval()
        meter = self.task.eval_meter(self.device)
        try:
            for batch in loader:
                x, y = self.task.prepare(batch, self.device, self.channels_last)
                with self._autocast():
                    out = model(x)
                meter.update(out, y)
        finally:
            model.train(was_training)
        metrics = meter.compute()
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics)
        if log and not self._in_epoch and self.is_main:
            self.metrics_log.write({"kind": "eval", "epoch": self.epoch, "step": self.global_step,
                                    **metrics})
        return metrics

    # ---------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the full training state (rank 0 only; all ranks must call it)."""
        target = Path(path) if path is not None else self.checkpoint_path
        if target is None:
            raise ConfigError("no checkpoint path: set config.run_dir or pass a path")
        rngs = D.all_gather_object(rng_state())
        if self.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "loader": self.data.train.state_dict(),
                "rng": rngs,
                "epoch": self.epoch,
                "global_step": self.global_step,
                "history": self.history,
                "callbacks": [cb.state_dict() for cb in self.callbacks],
                "callback_names": [type(cb).__name__ for cb in self.callbacks],
                "config": self.config.to_dict(),
                "world_size": self.dist.world_size,
            }
            save_checkpoint(target, state)
        D.barrier()
        return target if self.is_main else None

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore a state written by `save_checkpoint` into this trainer."""
        path = Path(path)
        state = load_checkpoint(path, trusted=True)
        try:
            names = state["callback_names"]
            mine = [type(cb).__name__ for cb in self.callbacks]
            if names != mine:
                raise ConfigError(f"checkpoint {path} was written with callbacks {names}, "
                                  f"this trainer has {mine}")
            for cb, cb_state in zip(self.callbacks, state["callbacks"], strict=True):
                cb.load_state_dict(cb_state)
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as exc:
                raise ConfigError(f"checkpoint {path} does not fit this model: "
                                  f"{str(exc).splitlines()[0]}") from exc
            self.epoch = int(state["epoch"])
            self.global_step = int(state["global_step"])
            self._prepare_model(carry_state=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.data.train.load_state_dict(state["loader"])
            self.history = list(state["history"])
            rngs = state["rng"]
            if len(rngs) == self.dist.world_size:
                set_rng_state(rngs[self.dist.rank])
            else:  # different number of processes: reproducible, not identical
                seed_everything(self.config.seed + self.dist.rank + 7919 * self.epoch)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CorruptFileError(f"checkpoint {path} is missing or has bad training state "
                                   f"({type(exc).__name__}: {exc})") from exc
        self.scheduler.apply(self.optimizer, self.global_step)
