"""BatchWhitening2d: Newton inverse square root, whitened outputs, gradients, eval, conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunelab
from prunelab.layers import (
    BatchWhitening2d,
    convert_batchnorm,
    group_size_for,
    newton_inverse_sqrt,
    whitening_layers,
)


def _spd(g: int, seed: int, batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4 * g, g, generator=gen, dtype=torch.float64)
    x[:, :, 1] += 0.8 * x[:, :, 0]  # some correlation
    cov = x.transpose(1, 2) @ x / (4 * g)
    return cov / torch.diagonal(cov, dim1=1, dim2=2).sum(-1).view(-1, 1, 1)  # trace 1


def _eig_inverse_sqrt(s: torch.Tensor) -> torch.Tensor:
    e, v = torch.linalg.eigh(s)
    return v @ torch.diag_embed(e.rsqrt()) @ v.transpose(-1, -2)


def test_newton_converges_to_the_inverse_square_root() -> None:
    s = _spd(8, 0)
    ref = _eig_inverse_sqrt(s)
    errors = [float((newton_inverse_sqrt(s, t) - ref).abs().max()) for t in (1, 3, 5, 10, 40)]
    assert errors[-1] < 1e-8  # converged, and the coupled form stays stable
    assert errors == sorted(errors, reverse=True)  # each step gets closer
    assert errors[0] > 1e-2  # a few steps are only approximate (BW by design)


def test_newton_is_stable_in_float32_for_many_steps() -> None:
    s = _spd(16, 1).float()
    ref = _eig_inverse_sqrt(s.double()).float()
    assert float((newton_inverse_sqrt(s, 60) - ref).abs().max()) < 1e-3


def test_newton_zero_iterations_is_identity() -> None:
    s = _spd(4, 2)
    assert torch.equal(newton_inverse_sqrt(s, 0), torch.eye(4, dtype=s.dtype).expand_as(s))


def test_group_size_divides_channels() -> None:
    assert group_size_for(64, 16) == 16
    assert group_size_for(24, 16) == 12
    assert group_size_for(8, 16) == 8
    assert group_size_for(17, 16) == 1
    with pytest.raises(ValueError):
        group_size_for(8, 0)


def _correlated_batch(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 32, 6, 6, generator=gen, dtype=torch.float64) * 2.0 + 0.5
    x[:, 1] += 0.9 * x[:, 0]
    x[:, 20] -= 0.7 * x[:, 17]
    return x


def test_training_output_is_whitened_per_group() -> None:
    layer = BatchWhitening2d(32, group_size=16, iterations=40).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    y = layer(_correlated_batch())
    flat = y.transpose(0, 1).reshape(32, -1)
    cov = torch.cov(flat, correction=0)
    for k in range(2):
        block = cov[16 * k : 16 * (k + 1), 16 * k : 16 * (k + 1)]
        gamma = layer.weight.detach()[16 * k : 16 * (k + 1)]
        # Σ_N is Σ / ‖γ‖², so the whitened covariance is ‖γ‖² I.
        expected = float((gamma * gamma).sum()) * torch.eye(16, dtype=block.dtype)
        assert torch.allclose(block, expected, atol=1e-4 * float(expected[0, 0]))


def test_five_iterations_decorrelate_partly() -> None:
    x = _correlated_batch()
    layer = BatchWhitening2d(32, group_size=16, iterations=5).double()
    y = layer(x)

    def offdiag(t: torch.Tensor) -> float:
        c = torch.corrcoef(t.transpose(0, 1).reshape(32, -1))[:16, :16]
        return float((c - torch.diag(torch.diagonal(c))).abs().max().detach())

    assert offdiag(y) < 0.5 * offdiag(x)


def test_group_size_one_equals_batch_norm() -> None:
    x = _correlated_batch().float()
    bn = nn.BatchNorm2d(32)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    bw = BatchWhitening2d.from_batchnorm(bn, group_size=1)
    # ρ_ii = var / (var + eps) is a hair below 1, so the match is to ~eps.
    assert torch.allclose(bw(x), bn(x), atol=1e-4)
    assert torch.allclose(bw.running_mean, bn.running_mean, atol=1e-6)
    assert torch.allclose(bw.running_var, bn.running_var, atol=1e-4)


def _reference_forward(layer: BatchWhitening2d, x: torch.Tensor) -> torch.Tensor:
    """The paper's formula with plain autograd: standardise, γ x̄ + β, then Σ_N^{-1/2}."""
    n, c, h, w = x.shape
    groups, g = layer.groups, layer.group_size
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    xbar = (x - mean) / (var + layer.eps).sqrt()
    flat = xbar.transpose(0, 1).reshape(groups, g, -1)
    rho = flat @ flat.transpose(1, 2) / flat.shape[-1]
    w_mat = layer.whitening_matrix(rho)
    z = layer.weight.view(1, c, 1, 1) * xbar + layer.bias.view(1, c, 1, 1)
    zg = z.transpose(0, 1).reshape(groups, g, -1)
    out = (w_mat @ zg).reshape(c, n, h, w).transpose(0, 1)
    if layer.output_scale is not None:
        out = out * layer.output_scale.view(1, c, 1, 1)
    return out


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_hand_written_backward_matches_autograd(with_scale: bool, channels_last: bool) -> None:
    torch.manual_seed(0)
    layer = BatchWhitening2d(8, group_size=4, iterations=5).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    x = torch.randn(4, 8, 3, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    scale = torch.rand(8, dtype=torch.float64, requires_grad=True) if with_scale else None
    layer.output_scale = scale
    probe = torch.randn(4, 8, 3, 3, dtype=torch.float64)
    fast = layer(x)
    assert fast.is_contiguous(memory_format=torch.channels_last) == channels_last  # layout kept
    ref = _reference_forward(layer, x)
    assert torch.allclose(fast, ref, atol=1e-10)
    wrt = [x, layer.weight, layer.bias] + ([scale] if scale is not None else [])
    g_fast = torch.autograd.grad((fast * probe).sum(), wrt)
    g_ref = torch.autograd.grad((ref * probe).sum(), wrt)
    for a, b in zip(g_fast, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-9), float((a - b).abs().max())


def test_running_estimates_drive_evaluation() -> None:
    torch.manual_seed(1)
    layer = BatchWhitening2d(16, group_size=8, momentum=None)  # cumulative average
    batches = [torch.randn(16, 16, 4, 4) * 3 + 1 for _ in range(3)]
    for b in batches:
        layer(b)
    allx = torch.cat(batches)
    assert torch.allclose(layer.running_mean, allx.mean(dim=(0, 2, 3)), atol=1e-5)
    layer.eval()
    x = batches[0]
    a, b = layer.affine()
    expected = torch.einsum("gij,ngjp->ngip", a, x.reshape(16, 2, 8, 16)) + b.view(1, 2, 8, 1)
    assert torch.allclose(layer(x), expected.reshape(x.shape), atol=1e-5)
    cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(cl, expected.reshape(x.shape), atol=1e-5)
    # The output scale is folded into the map.
    layer.output_scale = torch.zeros(16)
    layer.output_scale[3] = 1.0
    y = layer(x)
    assert torch.all(y[:, torch.arange(16) != 3] == 0)
    assert torch.allclose(y[:, 3], expected.reshape(x.shape)[:, 3], atol=1e-5)


def test_equivalent_affine_is_whitening_times_gamma_and_beta() -> None:
    layer = BatchWhitening2d(8, group_size=4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        layer.running_corr.copy_(torch.eye(4) * 0.6 + 0.4)
    w = layer.whitening_matrix()
    gam, bet = layer.equivalent_affine()
    for k in range(2):
        sl = slice(4 * k, 4 * k + 4)
        assert torch.allclose(gam[sl], w[k] @ layer.weight[sl], atol=1e-6)
        assert torch.allclose(bet[sl], w[k] @ layer.bias[sl], atol=1e-6)


def test_convert_swaps_every_batch_norm_and_keeps_parameters() -> None:
    model = prunelab.create("resnet20")
    before = {n: m.weight.detach().clone() for n, m in model.named_modules()
              if isinstance(m, nn.BatchNorm2d)}  # fmt: skip
    names = convert_batchnorm(model, group_size=16)
    assert set(names) == set(before)
    layers = whitening_layers(model)
    assert set(layers) == set(before)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(layers[n].weight, w) for n, w in before.items())
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert layers["bn1"].weight.grad is not None
    only = prunelab.create("resnet20")
    assert convert_batchnorm(only, names=["bn1"]) == ["bn1"]
    assert isinstance(only.layer1[0].bn1, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        convert_batchnorm(only, names=["nope"])


def test_bad_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expects"):
        BatchWhitening2d(8)(torch.randn(2, 4, 3, 3))


def test_autocast_runs_the_layer_in_float32() -> None:
    layer = BatchWhitening2d(16, group_size=8)
    x = torch.randn(8, 16, 4, 4)
    ref = layer(x)
    layer.running_mean.zero_()
    layer.running_var.fill_(1.0)
    layer.running_corr.copy_(torch.eye(8).repeat(2, 1, 1))
    layer.num_batches_tracked.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.1)  # only the bf16 rounding of the input differs
