"""Input-channel selection for pruned pre-activation norm layers (BN -> ReLU -> conv).

In a pre-activation network a norm layer normalises a tensor that other
layers read too (DenseNet's concatenated features, a pre-activation ResNet's
residual stream), so the channels one consumer drops cannot be removed from
the tensor itself. `SelectedNorm2d` replaces such a norm layer in a pruned
model: it reads the channels `index` of its input and computes the norm
layer's evaluation map on them,

- plain: a BatchNorm2d over the selected channels;
- whitened: the block-diagonal map of a batch-whitening layer as a grouped 1x1
  convolution (with the shift as its bias) over the selected whitening groups,
  of which the output channels `keep` stay.

It holds only tensors and sizes, so `spec()` and `from_spec()` rebuild it for
`prunelab.load` before the weights are loaded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["SelectedNorm2d"]


class SelectedNorm2d(nn.Module):
    """y = norm(x[:, index]) (plain), or conv1x1_grouped(x[:, index])[:, keep] (whitened)."""

    def __init__(
        self, selected: int, kept: int, groups: int = 0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.register_buffer("index", torch.zeros(selected, dtype=torch.long))
        self.whiten: nn.Conv2d | None = None
        self.norm: nn.BatchNorm2d | None = None
        if groups > 0:  # whitened: `selected` channels in `groups` equal whitening groups
            self.whiten = nn.Conv2d(selected, selected, 1, groups=groups, bias=True)
            self.register_buffer("keep", torch.zeros(kept, dtype=torch.long))
        else:
            self.norm = nn.BatchNorm2d(kept, eps=eps)

    def spec(self) -> dict[str, Any]:
        """Sizes `from_spec` rebuilds this module from (the tensors come from the state dict)."""
        if self.whiten is not None:
            return {"type": "SelectedNorm2d", "selected": int(self.index.numel()),
                    "kept": int(self.keep.numel()), "groups": int(self.whiten.groups)}
        assert self.norm is not None
        return {"type": "SelectedNorm2d", "selected": int(self.index.numel()),
                "kept": int(self.norm.num_features), "groups": 0, "eps": float(self.norm.eps)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SelectedNorm2d:
        return cls(int(spec["selected"]), int(spec["kept"]), int(spec["groups"]),
                   float(spec.get("eps", 1e-5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.index_select(1, self.index)
        if self.whiten is not None:
            return self.whiten(x).index_select(1, self.keep)
        assert self.norm is not None
        return self.norm(x)
