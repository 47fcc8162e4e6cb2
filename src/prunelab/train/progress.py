"""Progress lines for people (stderr) and a JSON-lines log for programs (metrics.jsonl).

The human side prints one line per epoch and, inside long epochs, a short
line every ~10% of the steps or every `every_seconds`; it reads the running
loss (one device sync) only when it prints. The log gets one JSON object per
record; every record has a "kind" ("start", "epoch", "eval", "log", "end").
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from prunelab.atomic import atomic_write_bytes

METRICS_NAME = "metrics.jsonl"


def format_seconds(seconds: float) -> str:
    """Compact duration: 45s, 3m05s, 2h01m."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _plain(value: Any) -> Any:
    """JSON-safe version of a metric value (tensors and numpy scalars become numbers)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (those of `kind` only, if given).

    Skips a last line cut short by a killed run, like `drop_epochs_after`.
    """
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or rec.get("kind") == kind:
            records.append(rec)
    return records


class MetricsLog:
    """Appends JSON records to `path` (nothing when path is None); each line flushed."""

    def __init__(self, path: str | Path | None, *, fresh: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fresh:
                self.path.write_text("")

    def drop_epochs_after(self, epoch: int) -> None:
        """Forget "epoch" records past `epoch` (written after the checkpoint we resume from).

        A run killed between writing an epoch's record and its checkpoint would
        otherwise log that epoch twice.
        """
        if self.path is None or not self.path.exists():
            return
        kept = [
            rec for rec in read_metrics(self.path)  # drops a line cut short by the kill
            if not (rec.get("kind") == "epoch" and rec.get("epoch", 0) > epoch)
        ]  # fmt: skip
        data = "".join(json.dumps(rec) + "\n" for rec in kept).encode()
        atomic_write_bytes(self.path, lambda f: f.write(data))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(_plain(record), sort_keys=False)
        with open(self.path, "a") as f:
            f.write(line + "\n")


class Progress:
    """Human-readable progress on a stream (stderr), silent when disabled."""

    def __init__(
        self, enabled: bool = True, every_seconds: float = 30.0, stream: TextIO | None = None
    ) -> None:
        self.enabled = enabled
        self.every_seconds = every_seconds
        self.stream = stream if stream is not None else sys.stderr
        self._next_fraction = 0.1
        self._last_print = 0.0
        self._epoch_start = 0.0

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def start_epoch(self) -> None:
        self._epoch_start = self._last_print = time.perf_counter()
        self._next_fraction = 0.1

    def due(self, step: int, total: int) -> bool:
        """Whether an in-epoch line is due after `step` of `total` steps (cheap to call)."""
        if not self.enabled or step >= total:
            return False
        now = time.perf_counter()
        if now - self._last_print < 2.0:  # never more than one line per 2 s
            return False
        return step / total >= self._next_fraction or now - self._last_print >= self.every_seconds

    def step_line(self, epoch: int, epochs: int, step: int, total: int, loss: float,
                  images: int) -> None:
        now = time.perf_counter()
        elapsed = now - self._epoch_start
        frac = step / total
        while self._next_fraction <= frac:
            self._next_fraction += 0.1
        self._last_print = now
        rate = images / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (total - step) / step if step else float("nan")
        self.print(f"  epoch {epoch}/{epochs} {100 * frac:3.0f}% ({step}/{total})  "
                   f"loss {loss:.4f}  {rate:.0f} img/s  epoch ETA {format_seconds(eta)}")

    def epoch_line(self, record: dict[str, Any], epochs: int, eta: float,
                   metrics: tuple[str, ...] = ("top1", "top5", "loss"),
                   train_metric: str | None = "top1") -> None:
        """One line per epoch; `metrics` are the task's test metrics (all but loss in %)."""
        parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}",
                 f"loss {record['train_loss']:.4f}"]
        if train_metric is not None:
            parts.append(f"{train_metric} {record[f'train_{train_metric}']:.2f}%")
        if f"test_{metrics[0]}" in record:
            shown = [f"{k} {record[f'test_{k}']:.4f}" if k == "loss" else
                     f"{k} {record[f'test_{k}']:.2f}%" for k in metrics]
            parts.append("| test " + " ".join(shown))
        parts += [f"| lr {record['lr']:.4g}", f"{record['img_per_s']:.0f} img/s",
                  f"{format_seconds(record['time'])}", f"ETA {format_seconds(eta)}"]
        self.print("  ".join(parts))
