"""The data-driven criteria es (empirical sensitivity) and kl rank units as their formulas say."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunelab
from prunelab import planners
from prunelab.criteria import DATA_DRIVEN, score
from prunelab.criteria.es import TIE_BREAK, conv_sensitivity, conv_shares
from prunelab.graph import Plan, prune, trace
from tests._nets import ConvBN, Residual, randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_es(a: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and mean share of each input feature of a linear layer, by explicit loops."""
    best = torch.zeros(a.shape[1], dtype=torch.float64)
    summed = torch.zeros(a.shape[1], dtype=torch.float64)
    a, w = a.double().abs(), w.double()
    for part in (w.clamp(min=0), (-w).clamp(min=0)):
        for x in a:
            for o in range(w.shape[0]):
                total = float((part[o] * x).sum())
                if total <= 0:
                    continue
                for j in range(a.shape[1]):
                    best[j] = max(best[j], float(part[o, j] * x[j]) / total)
                    summed[j] += float(part[o, j] * x[j]) / total
    return best, summed / (2 * a.shape[0] * w.shape[0])


def _brute_conv_es(a: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Per-channel convolutions against the whole neuron's mass, for a plain convolution."""
    w = conv.weight.detach()
    a = a.abs()
    best = torch.zeros(a.shape[1])
    opts = {"stride": conv.stride, "padding": conv.padding}
    for part in (w.clamp(min=0), (-w).clamp(min=0)):
        whole = F.conv2d(a, part, **opts)
        for j in range(a.shape[1]):
            mine = F.conv2d(a[:, j : j + 1], part[:, j : j + 1], **opts)
            share = torch.where(whole > 0, mine / whole, torch.zeros_like(mine))
            best[j] = max(best[j], float(share.max()))
    return best.double()


def test_es_and_kl_are_registered_as_data_driven() -> None:
    assert {"es", "kl"} <= DATA_DRIVEN
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    group = trace(model, torch.randn(1, 4)).group_of("0")
    for name in ("es", "kl"):
        with pytest.raises(ValueError, match="batches"):
            score(name, model, group)


def test_es_on_a_linear_consumer_is_the_largest_share_of_a_neuron() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    group = trace(model, torch.randn(1, 4)).group_of("0")
    xs = [torch.randn(6, 4), torch.randn(3, 4)]
    es = score("es", model, group, {"batches": [(x, None) for x in xs]})
    a = torch.cat([model[1](model[0](x)) for x in xs]).detach()
    largest, mean = _brute_es(a, model[2].weight.detach())
    assert torch.allclose(es, largest + TIE_BREAK * mean, atol=1e-7, rtol=0)
    assert ((es >= 0) & (es <= 1 + TIE_BREAK)).all()


def test_es_orders_units_tied_at_the_largest_share_by_their_mean_share() -> None:
    # Inputs that are active alone somewhere all reach share 1; the mean share decides.
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    group = trace(model, torch.randn(1, 3)).group_of("0")
    xs = [torch.eye(3), torch.ones(2, 3)]
    es = score("es", model, group, {"batches": xs})
    assert torch.all(es >= 1.0 - 1e-7)
    assert torch.argsort(es).tolist() == [0, 1, 2]


def test_es_on_conv_consumers_matches_per_channel_convolutions() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(ConvBN(3, 4), nn.Conv2d(4, 3, 3, stride=2, padding=1))
    randomize_bn(model)
    group = trace(model, torch.randn(1, 3, 8, 8)).group_of("0.0")
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        model[1].weight[:, 2] = 0  # channel 2 is read by nobody
    es = score("es", model.eval(), group, {"batches": [x]})
    a = model[0](x).detach()
    assert torch.allclose(es, _brute_conv_es(a, model[1]), atol=1e-5)
    assert int(torch.argmin(es)) == 2 and float(es[2]) == 0.0
    # For the tie-break's mean share: the shares of every neuron with input mass sum to 1.
    _, total, counted = conv_shares(model[1], a)
    assert 0.9 < float(total.sum()) / counted <= 1.0 + 1e-6


def test_es_of_a_grouped_convolution_takes_each_columns_largest_channel() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 12, 3, padding=1, stride=2, groups=4, bias=False)
    a = torch.randn(3, 8, 7, 7)
    got = conv_sensitivity(conv, a)
    per_channel = torch.zeros(8)
    w = conv.weight.detach()
    for part in (w.clamp(min=0), (-w).clamp(min=0)):
        whole = F.conv2d(a.abs(), part, stride=2, padding=1, groups=4)
        for c in range(8):
            g, k = divmod(c, 2)
            mine = F.conv2d(a[:, c : c + 1].abs(), part[3 * g : 3 * g + 3, k : k + 1], stride=2,
                            padding=1)  # fmt: skip
            den = whole[:, 3 * g : 3 * g + 3]
            share = torch.where(den > 0, mine / den, torch.zeros_like(mine))
            per_channel[c] = max(per_channel[c], float(share.max()))
    assert torch.allclose(got, per_channel.view(4, 2).amax(0), atol=1e-5)


def test_es_takes_the_maximum_over_a_coupled_groups_consumers() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(ConvBN(3, 4), Residual(4), nn.Conv2d(4, 2, 1)).eval()
    randomize_bn(model)
    graph = trace(model, torch.randn(1, 3, 6, 6))
    group = graph.group_of("0.0")
    assert group.coupled
    x = torch.randn(4, 3, 6, 6)
    inputs = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda mod, args, n=n: inputs.__setitem__(n, args[0].detach())
        )
        for n in group.consumers
    ]
    model(x)
    for h in hooks:
        h.remove()
    expected = torch.stack(
        [conv_sensitivity(model.get_submodule(n), inputs[n]) for n in group.consumers]
    ).amax(0)
    es = score("es", model, group, {"batches": [x]})
    assert set(group.consumers) == {"1.a.0", "2"}
    assert torch.allclose(es, expected.double(), atol=2 * TIE_BREAK)


def _classifier() -> nn.Module:
    torch.manual_seed(4)
    net = nn.Sequential(
        ConvBN(3, 4), Residual(4), ConvBN(4, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(5, 6),
    )  # fmt: skip
    return randomize_bn(net).eval()


@pytest.mark.parametrize("module", ["0.0", "2.0"])
def test_kl_is_the_divergence_from_the_network_without_the_unit(module: str) -> None:
    model = _classifier()
    graph = trace(model, torch.randn(1, 3, 6, 6))
    group = graph.group_of(module)
    x = torch.randn(7, 3, 6, 6)
    kl = score("kl", model, group, {"batches": [x[:4], (x[4:], torch.zeros(3))]})
    with torch.no_grad():
        ref = F.log_softmax(model(x), dim=1)
    for u in range(group.size):
        keep = torch.tensor([i for i in range(group.size) if i != u])
        small = prune(model, Plan(graph, {group.index: keep})).eval()
        with torch.no_grad():
            out = F.log_softmax(small(x), dim=1)
        expected = F.kl_div(out, ref, log_target=True, reduction="sum") / len(x)
        assert float(kl[u]) == pytest.approx(float(expected.detach()), rel=1e-4, abs=1e-7)
    # The weights are restored exactly after scoring.
    with torch.no_grad():
        assert torch.equal(F.log_softmax(model(x), dim=1), ref)


def test_kl_ranks_a_silenced_unit_last_with_one_mask_for_a_coupled_group() -> None:
    model = _classifier()
    graph = trace(model, torch.randn(1, 3, 6, 6))
    group = graph.group_of("0.0")
    assert group.coupled
    with torch.no_grad():
        for bn in (model[0][1], model[1].b[1]):
            bn.weight[1] = 0
            bn.bias[1] = 0
    kl = score("kl", model, group, {"batches": [torch.randn(5, 3, 6, 6)]})
    assert float(kl[1]) == pytest.approx(0.0, abs=1e-9)
    assert (kl[[0, 2, 3]] > 1e-6).all()
    assert int(torch.argmin(kl)) == 1


@pytest.mark.parametrize("criterion", ["es", "kl"])
def test_es_and_kl_plan_and_prune_a_tiny_resnet(criterion: str) -> None:
    torch.manual_seed(5)
    model = prunelab.create("resnet20").eval()
    x = torch.randn(1, 3, 16, 16)
    graph = trace(model, x)
    stats = {"batches": [torch.randn(4, 3, 16, 16)]}
    plan = planners.for_cost(model, graph, 0.5, criterion=criterion, stats=stats, tolerance=0.02)
    small = prune(model, plan)
    ratio = prunelab.count(small, x).flops / prunelab.count(model, x).flops
    assert ratio == pytest.approx(0.5, abs=0.011)
    assert small(x).shape == (1, 10)
