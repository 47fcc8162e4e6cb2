"""Whole-batch augmentation on uint8 tensors.

Per-image PIL work would dominate a CIFAR epoch on two cores, so the in-memory
loaders augment a whole batch with a handful of tensor ops: one padded tensor
and a per-sample window index for the random crop, torch.where for the flip,
then one float conversion that also normalises. Randomness is drawn separately
(`draw_crop_flip`) so that it can come from the loader's own generator and be
tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from prunelab.errors import ConfigError


def draw_crop_flip(
    n: int, pad: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-sample crop offsets in [0, 2*pad] and flip decisions.

    Always draws the same amount of randomness whatever `pad`/`flip` say, so
    switching augmentation on or off never shifts the random stream.
    """
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    return offsets[0], offsets[1], flips


def crop_flip(
    x: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flips: torch.Tensor,
    pad: int,
) -> torch.Tensor:
    """Pad every image by `pad` zeros, crop back to H x W at the given offsets, flip some.

    `x` is (B, C, H, W) of any dtype; offsets are (B,) integers in [0, 2*pad],
    `flips` is a (B,) bool mask. Equivalent to torchvision's
    RandomCrop(H, padding=pad) + RandomHorizontalFlip applied per image, done on
    the whole batch: `unfold` views the padded batch as all (2*pad+1)^2 crop
    windows without copying, one advanced index picks each sample's window, and
    torch.where applies the flips (no data-dependent branch, so no device sync).
    """
    b, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W), a view
    out = windows[torch.arange(b, device=dev), :, offset_y.to(dev), offset_x.to(dev)]
    return torch.where(flips.to(dev).view(b, 1, 1, 1), out.flip(3), out)


def draw_cutout(
    n: int, h: int, w: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cutout centres, uniform over the image (so squares may be clipped)."""
    return (torch.randint(0, h, (n,), generator=generator),
            torch.randint(0, w, (n,), generator=generator))


def cutout_size(size: int) -> int:
    """A loader's `cutout` option checked: the erased square's side, 0 = off."""
    if size < 0:
        raise ConfigError(f"cutout must be >= 0 (0 = off), got {size}")
    return int(size)


def cutout(
    x: torch.Tensor, center_y: torch.Tensor, center_x: torch.Tensor, size: int
) -> torch.Tensor:
    """Zero a size x size square around each sample's centre (DeVries & Taylor, 2017).

    Applied after normalisation, so the square takes the data set's mean colour.
    The square is clipped at the border like the paper's version, which keeps
    the expected erased area smaller than size^2 and sometimes spares an image.
    One broadcast comparison builds all masks; no per-image loop.
    """
    if size <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    lo = size // 2
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    cy = center_y.to(dev).view(b, 1, 1)
    cx = center_x.to(dev).view(b, 1, 1)
    inside = (ys >= cy - lo) & (ys < cy - lo + size) & (xs >= cx - lo) & (xs < cx - lo + size)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 standardised per channel.

    Mean and std are given for images in [0, 1] (the usual published values),
    as sequences or as tensors already on x's device (see `norm_constants`).
    """
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        mean, std = norm_constants(mean, std, x.device)
    return (x.float() - mean) / std


def norm_constants(
    mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) float tensors of mean*255 and std*255 on `device`, for `normalize`."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return m.to(device), s.to(device)


def resize(x: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Bilinear, antialiased down- (or up-) sampling to resolution x resolution.

    Resolution pruning trains and evaluates on smaller inputs; antialiasing keeps
    the down-sampled image close to what a camera at that resolution would see.
    """
    if resolution is None or (x.shape[-2] == resolution and x.shape[-1] == resolution):
        return x
    return F.interpolate(
        x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
    )
