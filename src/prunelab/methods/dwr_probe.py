"""DBP (discrimination-based block pruning): how much each residual block adds to a linear probe.

For every block, a linear classifier (multinomial logistic regression) is
fitted on the globally pooled features entering the block and on those
leaving it; the block's importance is the gain in probe accuracy. In a chain
of blocks a block's input is the previous block's output, so this is "the
gain over the previous block" of the paper, and it also covers a first block
(compared with the stem) and blocks after a non-removable one. A block whose
branch adds nothing leaves the features unchanged, and because the probe fit
is deterministic (zero start, full-batch L-BFGS), its gain is exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["dbp_importance", "pooled_features", "probe_accuracy"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _pool(t: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, C): global average over spatial dimensions."""
    return t.flatten(2).mean(dim=2) if t.dim() > 2 else t.flatten(1)


@torch.no_grad()
def pooled_features(
    model: nn.Module, blocks: Sequence[str], batches: Batches
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Pooled (input, output) features of each named block over `batches`, and the labels."""
    store: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {b: ([], []) for b in blocks}

    def hook(name: str):
        def fn(_m: nn.Module, args: tuple, output: torch.Tensor) -> None:
            store[name][0].append(_pool(args[0]).float().cpu())
            store[name][1].append(_pool(output).float().cpu())

        return fn

    handles = [model.get_submodule(b).register_forward_hook(hook(b)) for b in blocks]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels = []
    try:
        for x, y in batches:
            model(x.to(device))
            labels.append(y.cpu())
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not labels:
        raise ValueError("no batches to compute probe features on")
    feats = {b: (torch.cat(i), torch.cat(o)) for b, (i, o) in store.items()}
    return feats, torch.cat(labels)


@torch.no_grad()
def probe_accuracy(
    fit_x: torch.Tensor,
    fit_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    num_classes: int,
    iters: int = 100,
    weight_decay: float = 1e-4,
) -> float:
    """Accuracy (percent) on (eval_x, eval_y) of a logistic regression fitted on (fit_x, fit_y).

    Features are standardised with the fit set's statistics; the fit starts
    from zero and runs full-batch L-BFGS in float64 with the analytic
    gradient (no autograd: it is the cost of a few matrix products per step,
    and it honours torch's thread setting), so identical features give
    identical accuracies.
    """
    x = fit_x.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    onehot = F.one_hot(fit_y.long(), num_classes).double()
    n = x.shape[0]
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64)
    b = torch.zeros(num_classes, dtype=torch.float64)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        logits = x @ w + b
        loss = -(onehot * torch.log_softmax(logits, dim=1)).sum() / n
        diff = (torch.softmax(logits, dim=1) - onehot) / n
        w.grad = x.T @ diff + weight_decay * w
        b.grad = diff.sum(dim=0)
        return loss + 0.5 * weight_decay * (w * w).sum()

    opt.step(closure)
    pred = (((eval_x.double() - mean) / std) @ w + b).argmax(dim=1)
    return 100.0 * float((pred == eval_y.long()).double().mean())


def dbp_importance(
    model: nn.Module,
    blocks: Sequence[str],
    fit_batches: Batches,
    eval_batches: Batches,
    num_classes: int,
) -> dict[str, float]:
    """Gain in linear-probe accuracy (percentage points) of each block, in `blocks` order.

    Probes are fitted on `fit_batches` and scored on `eval_batches`
    (different images, e.g. two halves of a hold-out split).
    """
    if not blocks:
        return {}
    fit, fit_y = pooled_features(model, blocks, fit_batches)
    ev, ev_y = pooled_features(model, blocks, eval_batches)
    scores = {}
    last: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for b in blocks:
        (fit_in, fit_out), (ev_in, ev_out) = fit[b], ev[b]
        if last is not None and torch.equal(fit_in, last[0]) and torch.equal(ev_in, last[1]):
            before = last[2]  # chained blocks: this input is the previous output
        else:
            before = probe_accuracy(fit_in, fit_y, ev_in, ev_y, num_classes)
        after = probe_accuracy(fit_out, fit_y, ev_out, ev_y, num_classes)
        scores[b] = after - before
        last = (fit_out, ev_out, after)
    return scores
