"""Models that return auxiliary logits in training (GoogLeNet, Inception-v3).

torchvision's GoogLeNet and Inception-v3 return a named tuple in training mode
(`GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`, `InceptionOutputs(logits,
aux_logits)`). Their reference training adds the auxiliary losses with weight
0.3 (GoogLeNet, Szegedy et al. 2015) and 0.4 (torchvision's Inception-v3
recipe); metrics and callbacks see only the main logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

AUX_WEIGHTS = {"GoogLeNetOutputs": 0.3, "InceptionOutputs": 0.4}


def main_logits(out: object) -> torch.Tensor:
    """The main logits of a model's output (the output itself for plain models)."""
    return out.logits if type(out).__name__ in AUX_WEIGHTS else out  # type: ignore[union-attr]


def aux_loss(
    out: object, y: torch.Tensor, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor | None:
    """The weighted auxiliary losses of a training-mode output, or None if it has none."""
    weight = AUX_WEIGHTS.get(type(out).__name__)
    if weight is None:
        return None
    aux = [a for a in out[1:] if a is not None]  # type: ignore[index]
    return weight * sum(criterion(a, y) for a in aux) if aux else None


def training_loss(
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[object, torch.Tensor], torch.Tensor]:
    """The loss of a training step: `criterion` on the main logits plus the aux losses."""

    def loss(out: object, y: torch.Tensor) -> torch.Tensor:
        main = criterion(main_logits(out), y)
        aux = aux_loss(out, y, criterion)
        return main if aux is None else main + aux

    return loss
