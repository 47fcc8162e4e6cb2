"""Batch whitening (BW): batch norm followed by group-wise decorrelation of the channels.

The layer of BWCP (Shao et al.). With x̄ the batch-standardised input and ρ
the channel correlation of the batch, the output is

    y = Σ_N^{-1/2} (γ ⊙ x̄ + β),    Σ_N = (γγᵀ ⊙ ρ) / ‖γ‖²,

computed independently in groups of `group_size` channels. Σ_N is the
covariance of γ ⊙ x̄ + β divided by its trace, so its eigenvalues lie in
(0, 1] and the Newton iteration Σ_0 = I, Σ_k = ½(3Σ_{k−1} − Σ_{k−1}³ Σ_N)
converges towards Σ_N^{-1/2} (run in its numerically stable coupled form);
`iterations` steps (default 5) give the approximate whitening the paper
uses. Σ_N^{-1/2}γ and Σ_N^{-1/2}β are the layer's equivalent per-channel
scale and shift (`equivalent_affine`).

Why it is fast on a CPU: the whole layer is one affine map of the raw input,
y = A x + b with A = W diag(γ/σ) block-diagonal (W = Σ_N^{-1/2}, σ the
standard deviations) and b = Wβ − Aμ. A training step is a mean, one
batched matrix product for every group's second moments, a few tiny g×g
Newton products and one batched product applying A; the backward pass over
the big tensors is written by hand (two batched products into one gradient
tensor) and autograd only differentiates the tiny g×g part. Channels-last
inputs (up to 256 channels) use one dense block-diagonal GEMM over all
pixels instead, and keep their layout.

`output_scale` (None, or a (C,) tensor that may carry gradients) multiplies
each output channel; it is folded into A and b, so a per-channel gate costs
nothing on the big tensors.

For evaluation the layer keeps running estimates (momentum as batch norm's)
of the mean, the variance and the correlation ρ; the whitening matrix is
rebuilt from the running ρ and the current γ, so it always matches the
parameters. This module knows nothing about pruning.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = [
    "BatchWhitening2d",
    "convert_batchnorm",
    "group_size_for",
    "newton_inverse_sqrt",
    "whitening_layers",
]


def newton_inverse_sqrt(sigma: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Approximate Σ^{-1/2} of a batch of SPD matrices (..., g, g) by Newton iterations.

    The iteration of the paper, Σ_0 = I, Σ_k = ½(3Σ_{k−1} − Σ_{k−1}³ Σ), in its
    coupled form (Y_0 = Σ, Z_0 = I, T = ½(3I − Z Y), Y <- Y T, Z <- T Z): the
    same Z_k = Σ_k in exact arithmetic, but numerically stable, whereas the
    plain form drifts apart in float32 after ~10 steps. Converges when the
    eigenvalues of Σ lie in (0, 1] (divide Σ by its trace); small eigenvalues
    converge slowest, so few iterations whiten only partly (by design in BW).
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    g = sigma.shape[-1]
    eye = torch.eye(g, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    if iterations == 0:
        return eye
    # First step in closed form: Z_1 = ½(3I − Σ), Y_1 = Σ Z_1.
    z = 1.5 * eye - 0.5 * sigma
    y = sigma @ z
    for _ in range(iterations - 1):
        t = 1.5 * eye - 0.5 * (z @ y)
        y = y @ t
        z = t @ z
    return z


def group_size_for(num_features: int, requested: int) -> int:
    """The largest divisor of `num_features` not above `requested`.

    Groups must be equal for one batched product; 24 channels with a
    requested 16 whiten in groups of 12. A size of 1 makes the layer exactly
    batch norm.
    """
    if requested < 1:
        raise ValueError(f"group_size must be >= 1, got {requested}")
    for g in range(min(requested, num_features), 0, -1):
        if num_features % g == 0:
            return g
    return 1


class BatchWhitening2d(nn.Module):
    """Drop-in replacement for BatchNorm2d that also decorrelates channels group-wise.

    Parameters `weight` (γ) and `bias` (β) have BatchNorm2d's meaning and
    shape; buffers `running_mean`, `running_var` (unbiased, as batch norm) and
    `running_corr` (groups, g, g) are the evaluation statistics. `momentum`
    None means a cumulative average, as in batch norm.
    """

    def __init__(
        self,
        num_features: int,
        group_size: int = 16,
        iterations: int = 5,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.num_features = num_features
        self.group_size = group_size_for(num_features, group_size)
        self.iterations = iterations
        self.eps = eps
        self.momentum = momentum
        groups, g = self.groups, self.group_size
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("running_corr", torch.eye(g).repeat(groups, 1, 1))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        # Per-channel multiplier of the output (e.g. a gate set before each forward).
        self.output_scale: torch.Tensor | None = None

    @property
    def groups(self) -> int:
        return self.num_features // self.group_size

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, group_size={self.group_size}, iterations={self.iterations}, "
            f"eps={self.eps}, momentum={self.momentum}"
        )

    @torch.no_grad()
    def reset_running_stats(self) -> None:
        """Back to the initial estimates (mean 0, variance 1, correlation I), as batch norm."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        eye = torch.eye(self.group_size, dtype=self.running_corr.dtype)
        self.running_corr.copy_(eye.to(self.running_corr.device).expand_as(self.running_corr))
        self.num_batches_tracked.zero_()

    # ---------------------------------------------------------------- maths
    def whitening_matrix(
        self, corr: torch.Tensor | None = None, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Σ_N^{-1/2} per group (groups, g, g) for correlation `corr` (default: running)."""
        # A copy: training updates the buffer in place, which would break graphs built on it.
        corr = self.running_corr.clone() if corr is None else corr
        weight = self.weight if weight is None else weight
        gam = weight.view(self.groups, self.group_size)
        norm = (gam * gam).sum(1).clamp_min(1e-12).view(-1, 1, 1)
        sigma = gam.unsqueeze(2) * gam.unsqueeze(1) * corr / norm
        return newton_inverse_sqrt(sigma, self.iterations)

    def equivalent_affine(
        self, corr: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel scale γ̂ = Σ_N^{-1/2}γ and shift β̂ = Σ_N^{-1/2}β (differentiable)."""
        w = self.whitening_matrix(corr)
        shape = (self.groups, self.group_size, 1)
        gam = (w @ self.weight.view(shape)).reshape(-1)
        bet = (w @ self.bias.view(shape)).reshape(-1)
        return gam, bet

    def affine(self, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation map y = s ⊙ (A x + b) of the raw input: A (groups, g, g), b (C,).

        `scale` s defaults to `output_scale` (none: 1).
        """
        w = self.whitening_matrix()
        inv_std = (self.running_var + self.eps).rsqrt()
        scale = self.output_scale if scale is None else scale
        return self._affine(w, self.running_mean, inv_std, self.weight, self.bias, scale)

    def _affine(
        self,
        w: torch.Tensor,
        mean: torch.Tensor,
        inv_std: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        scale: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.groups, self.group_size)
        a = w * (weight * inv_std).view(shape).unsqueeze(1)  # W diag(γ/σ)
        b = (w @ bias.view(*shape, 1)) - (a @ mean.view(*shape, 1))
        if scale is not None:
            a = a * scale.view(*shape, 1)
            b = b * scale.view(*shape, 1)
        return a, b.reshape(-1)

    def from_moments(
        self,
        mean: torch.Tensor,
        second: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training map (A, b), biased variance and correlation from a batch's raw moments.

        `mean` is E[x] (C,), `second` is E[x xᵀ] per group (groups, g, g), `scale`
        the output multiplier. Only small tensors: the part autograd differentiates.
        """
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        groups, g = self.groups, self.group_size
        mg = mean.view(groups, g)
        cov = second - mg.unsqueeze(2) * mg.unsqueeze(1)
        var = torch.diagonal(cov, dim1=1, dim2=2).reshape(-1).clamp_min(0.0)
        inv_std = (var + self.eps).rsqrt()
        inv = inv_std.view(groups, g)
        corr = cov * inv.unsqueeze(2) * inv.unsqueeze(1)
        w = self.whitening_matrix(corr, weight)
        a, b = self._affine(w, mean, inv_std, weight, bias, scale)
        return a, b, var, corr

    @torch.no_grad()
    def _update_running(
        self, mean: torch.Tensor, var: torch.Tensor, corr: torch.Tensor, count: int
    ) -> None:
        self.num_batches_tracked += 1
        m = self.momentum
        if m is None:  # cumulative average, as BatchNorm with momentum=None
            m = 1.0 / float(self.num_batches_tracked)
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.lerp_(mean, m)
        self.running_var.lerp_(unbiased, m)
        self.running_corr.lerp_(corr, m)

    # -------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchWhitening2d({self.num_features}) expects (N, {self.num_features}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if torch.is_autocast_enabled(x.device.type):
            # Statistics and Newton iterations need float32; the next layer casts back.
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            out, mean, var, corr = _BatchWhiten.apply(
                x, self.weight, self.bias, self.output_scale, self
            )
            n, _, h, w = x.shape
            self._update_running(mean, var, corr, n * h * w)
            return out
        a, b = self.affine()
        dense = _dense_layout(x)
        return _apply_groups(x if dense else x.contiguous(), a, b, dense)

    @classmethod
    def from_batchnorm(
        cls,
        bn: nn.BatchNorm2d,
        group_size: int = 16,
        iterations: int = 5,
        momentum: float | None = 0.1,
    ) -> BatchWhitening2d:
        """A BW layer with `bn`'s γ, β, ε and running mean/variance (correlation starts at I)."""
        layer = cls(bn.num_features, group_size, iterations, bn.eps, momentum)
        ref = bn.running_mean if bn.running_mean is not None else bn.weight
        layer.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if bn.affine:
                layer.weight.copy_(bn.weight)
                layer.bias.copy_(bn.bias)
            if bn.track_running_stats and bn.running_mean is not None:
                layer.running_mean.copy_(bn.running_mean)
                layer.running_var.copy_(bn.running_var)
        return layer


# Up to this many channels a channels-last input is handled with one dense block-diagonal
# C x C matrix (one GEMM over all pixels); wider layers use the grouped NCHW kernels.
_DENSE_MAX = 256


def _dense_layout(x: torch.Tensor) -> bool:
    """True for a channels-last (N, C, H, W) tensor narrow enough for the dense kernels."""
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return cl and x.shape[1] <= _DENSE_MAX


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A channels-last tensor as its (pixels, C) matrix (a view)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _new_like(x: torch.Tensor, dense: bool) -> torch.Tensor:
    fmt = torch.channels_last if dense else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _diagonal_blocks(full: torch.Tensor, groups: int, g: int) -> torch.Tensor:
    """The (groups, g, g) diagonal blocks of a (C, C) matrix."""
    return full.view(groups, g, groups, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _moments(x: torch.Tensor, groups: int, g: int, dense: bool) -> tuple[torch.Tensor, ...]:
    """E[x] (C,) and E[x xᵀ] per group (groups, g, g) over samples and pixels."""
    n, _, h, w = x.shape
    count = n * h * w
    if dense:
        rows = _rows(x)
        return rows.mean(0), _diagonal_blocks(rows.t() @ rows, groups, g) / count
    xg = x.view(n * groups, g, h * w)
    second = _sum_over_samples(torch.bmm(xg, xg.transpose(1, 2)), n) / count
    return x.mean(dim=(0, 2, 3)), second


def _apply_groups(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dense: bool = False
) -> torch.Tensor:
    """y = A x + b per group, into a fresh tensor of x's layout (not a view: callers
    such as an in-place ReLU after the custom autograd Function may modify it)."""
    n, c, h, w = x.shape
    groups, g, _ = a.shape
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (x, a, b))
    if dense:
        if differentiable:  # evaluation with gradients: plain autograd ops
            rows = torch.addmm(b, _rows(x), torch.block_diag(*a).t())
            return rows.view(n, h, w, c).permute(0, 3, 1, 2)
        out = _new_like(x, dense)
        torch.addmm(b, _rows(x), torch.block_diag(*a).t(), out=_rows(out))
        return out
    xg = x.reshape(n * groups, g, h * w)
    a_all = a.unsqueeze(0).expand(n, groups, g, g).reshape(n * groups, g, g)
    b_all = b.view(1, groups, g, 1).expand(n, groups, g, 1).reshape(n * groups, g, 1)
    if differentiable:
        return torch.baddbmm(b_all, a_all, xg).view(n, c, h, w)
    out = _new_like(x, dense)
    torch.baddbmm(b_all, a_all, xg, out=out.view(n * groups, g, h * w))
    return out


def _sum_over_samples(t: torch.Tensor, n: int) -> torch.Tensor:
    """(n * groups, g, g) -> (groups, g, g) summed over samples."""
    return t.view(n, -1, *t.shape[1:]).sum(0)


class _BatchWhiten(torch.autograd.Function):
    """Training-mode BW with a hand-written backward for the passes over x.

    Forward: mean and E[x xᵀ] (one batched product), then the small graph
    moments -> (A, b) under autograd, then y = A x + b. Backward: dA = Σ dy xᵀ
    and db = Σ dy, the small graph's gradient by autograd, and
    dx = Aᵀ dy + (dS + dSᵀ) x / M + dμ / M accumulated into one tensor. That is
    the fewest full-size passes; plain autograd makes several more copies.
    NCHW inputs use batched g x g products per (sample, group); channels-last
    inputs one dense block-diagonal GEMM over all pixels.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        scale: torch.Tensor | None,
        layer: BatchWhitening2d,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dense = _dense_layout(x)
        was_cl = not dense and x.is_contiguous(memory_format=torch.channels_last)
        if not dense:
            x = x.contiguous()
        n, _, h, w = x.shape
        mean, second = _moments(x, layer.groups, layer.group_size, dense)
        with torch.enable_grad():
            inputs = (mean, second, weight, bias, scale)
            leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
            a, b, var, corr = layer.from_moments(*leaves)
        out = _apply_groups(x, a.detach(), b.detach(), dense)
        if was_cl and not out.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)  # keep the caller's layout
        ctx.save_for_backward(x)
        ctx.small = (leaves, a, b)
        ctx.count = n * h * w
        ctx.dense = dense
        var_d, corr_d = var.detach(), corr.detach()
        ctx.mark_non_differentiable(mean, var_d, corr_d)
        return out, mean, var_d, corr_d

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_out: torch.Tensor,
        *_unused: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        leaves, a, b = ctx.small
        dense, count = ctx.dense, ctx.count
        n, c, h, w = x.shape
        groups, g, _ = a.shape
        if dense:
            dy_rows = _rows(grad_out.contiguous(memory_format=torch.channels_last))
            x_rows = _rows(x)
            grad_a = _diagonal_blocks(dy_rows.t() @ x_rows, groups, g)
            grad_b = dy_rows.sum(0)
        else:
            dy = grad_out.contiguous().view(n * groups, g, h * w)
            xg = x.view(n * groups, g, h * w)
            grad_a = _sum_over_samples(torch.bmm(dy, xg.transpose(1, 2)), n)
            grad_b = dy.sum(dim=2).view(n, c).sum(0)
        present = [t for t in leaves if t is not None]
        with torch.enable_grad():
            grads = iter(torch.autograd.grad((a, b), present, (grad_a, grad_b), allow_unused=True))
        d_mean, d_second, d_weight, d_bias, d_scale = (
            None if t is None else next(grads) for t in leaves
        )
        grad_x = None
        if ctx.needs_input_grad[0]:
            const = torch.zeros(c, dtype=x.dtype, device=x.device)
            if d_mean is not None:
                const = d_mean / count
            a_d = a.detach()
            sym = None
            if d_second is not None:
                sym = (d_second + d_second.transpose(1, 2)) / count
            grad_x = _new_like(x, dense)
            if dense:  # row form: dx = dy A + x D + c
                gx = _rows(grad_x)
                torch.addmm(const, dy_rows, torch.block_diag(*a_d), out=gx)
                if sym is not None:
                    gx.addmm_(x_rows, torch.block_diag(*sym))
            else:
                a_t = a_d.transpose(1, 2).unsqueeze(0).expand(n, groups, g, g)
                start = const.view(1, groups, g, 1).expand(n, groups, g, 1)
                gx = grad_x.view(n * groups, g, h * w)
                torch.baddbmm(
                    start.reshape(n * groups, g, 1), a_t.reshape(n * groups, g, g), dy, out=gx
                )
                if sym is not None:
                    sym_all = sym.unsqueeze(0).expand(n, groups, g, g).reshape(n * groups, g, g)
                    gx.baddbmm_(sym_all, xg)
        return grad_x, d_weight, d_bias, d_scale, None


def convert_batchnorm(
    model: nn.Module,
    names: Iterable[str] | None = None,
    group_size: int = 16,
    iterations: int = 5,
    momentum: float | None = 0.1,
) -> list[str]:
    """Replace BatchNorm2d modules of `model` in place by BatchWhitening2d; return their names.

    `names` restricts the swap to those modules (None: every BatchNorm2d).
    The model's parameters change, so build the optimizer afterwards.
    """
    wanted = None if names is None else set(names)
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and name and (wanted is None or name in wanted)
    ]
    if wanted is not None:
        missing = sorted(wanted - {name for name, _ in found})
        if missing:
            raise ValueError(f"no BatchNorm2d named {missing} in the model")
    for name, bn in found:
        model.set_submodule(
            name, BatchWhitening2d.from_batchnorm(bn, group_size, iterations, momentum)
        )
    return [name for name, _ in found]


def whitening_layers(model: nn.Module) -> dict[str, BatchWhitening2d]:
    """Every BatchWhitening2d of `model`, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BatchWhitening2d)}
