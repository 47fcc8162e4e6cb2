"""Training on GoogLeNet/Inception outputs: main logits plus weighted aux losses."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.googlenet import GoogLeNetOutputs
from torchvision.models.inception import InceptionOutputs

from prunelab.train.aux_outputs import aux_loss, main_logits, training_loss


def test_main_logits_and_weighted_aux_losses() -> None:
    torch.manual_seed(0)
    y = torch.tensor([0, 2])
    a, b, c = (torch.randn(2, 3) for _ in range(3))
    ce = nn.CrossEntropyLoss()
    g = GoogLeNetOutputs(a, b, c)
    assert main_logits(g) is a
    torch.testing.assert_close(aux_loss(g, y, ce), 0.3 * (ce(b, y) + ce(c, y)))
    i = InceptionOutputs(a, b)
    torch.testing.assert_close(aux_loss(i, y, ce), 0.4 * ce(b, y))
    assert aux_loss(InceptionOutputs(a, None), y, ce) is None
    assert main_logits(a) is a and aux_loss(a, y, ce) is None


def test_training_loss_is_the_main_loss_plus_the_aux_losses() -> None:
    """What a training step (and the memory-layout timing of one) minimises."""
    torch.manual_seed(0)
    y = torch.tensor([1, 0])
    a, b, c = (torch.randn(2, 3) for _ in range(3))
    ce = nn.CrossEntropyLoss()
    loss = training_loss(ce)
    want = ce(a, y) + 0.3 * (ce(b, y) + ce(c, y))
    torch.testing.assert_close(loss(GoogLeNetOutputs(a, b, c), y), want)
    torch.testing.assert_close(loss(a, y), ce(a, y))
