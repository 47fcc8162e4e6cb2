"""Cost counting (MACs, params) against published numbers, and latency sanity."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunelab import models
from prunelab.errors import ConfigError
from prunelab.metrics import (
    Cost,
    LatencyStats,
    best_memory_format,
    compare_latency,
    compare_train_step,
    count,
    format_count,
    measure_latency,
    measure_train_step,
)

# (model, input side, published MACs, published params). ImageNet figures are
# torchvision's published ones; CIFAR figures from the papers (ResNet-56:
# 125.5 M as in the pruning literature; VGG-16: network slimming).
PUBLISHED = [
    ("resnet50", 224, 4.11e9, 25.6e6),
    ("mobilenet_v2", 224, 0.30e9, 3.5e6),
    ("efficientnet_b0", 224, 0.39e9, 5.3e6),
    ("resnet20", 32, 41e6, 0.27e6),
    ("resnet56", 32, 125.5e6, 0.85e6),
    ("cifar_vgg16", 32, 313e6, 14.7e6),
]


@pytest.mark.parametrize(("name", "side", "macs", "params"), PUBLISHED)
def test_counts_match_published(name: str, side: int, macs: float, params: float) -> None:
    cost = count(models.create(name), torch.randn(1, 3, side, side))
    assert cost.flops == pytest.approx(macs, rel=0.02)
    assert cost.params == pytest.approx(params, rel=0.02)


@pytest.mark.parametrize(
    ("name", "params"),
    [("densenet40", 1.0e6), ("resnet164", 1.7e6), ("wrn28_10", 36.5e6)],
)
def test_params_match_papers(name: str, params: float) -> None:
    model = models.create(name)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.02)


def test_densenet40_macs_match_network_slimming() -> None:
    """Network slimming reports 5.33e8 FLOPs counting a MAC as two."""
    cost = count(models.create("densenet40"), torch.randn(1, 3, 32, 32))
    assert cost.flops == pytest.approx(5.33e8 / 2, rel=0.02)


def test_grouped_and_depthwise_convs_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2),  # 5x5 out
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),  # depthwise, 3x3 out
        nn.Conv2d(8, 6, 1),  # pointwise
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
    )
    cost = count(model, torch.randn(3, 4, 5, 5))
    grouped = (8 * 5 * 5) * (4 // 2) * 9  # out elems x in/groups x k*k = 3600
    depthwise = (8 * 3 * 3) * 1 * 9  # 648
    pointwise = (6 * 3 * 3) * 8  # 432
    linear = 54 * 5  # 270
    assert cost.flops == grouped + depthwise + pointwise + linear == 4950
    assert cost.by_module == {"0": grouped, "1": depthwise, "2": pointwise, "4": linear}
    expected_params = (8 * 2 * 9 + 8) + (8 * 9) + (6 * 8 + 6) + (54 * 5 + 5)
    assert cost.params == expected_params


def test_conv1d_transposed_and_token_linear() -> None:
    conv1d = count(nn.Conv1d(3, 4, 5, padding=2), torch.randn(2, 3, 10))
    assert conv1d.flops == 4 * 10 * 3 * 5
    # Transposed conv: every input element meets out/groups channels x k*k.
    up = count(nn.ConvTranspose2d(4, 2, 2, stride=2), torch.randn(1, 4, 3, 3))
    assert up.flops == (4 * 3 * 3) * 2 * 4
    # Linear on (N, tokens, features): in x out per row.
    tokens = count(nn.Linear(8, 16), torch.randn(2, 7, 8))
    assert tokens.flops == 7 * 8 * 16


def test_count_is_per_image() -> None:
    model = models.create("resnet20")
    one = count(model, torch.randn(1, 3, 32, 32))
    four = count(model, torch.randn(4, 3, 32, 32))
    assert one == four
    assert sum(one.by_module.values()) == one.flops


def test_shared_module_counted_per_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    cost = count(Twice(), torch.randn(1, 4))
    assert cost.flops == 2 * 16
    assert cost.params == 16


def test_count_restores_modes_and_removes_hooks() -> None:
    model = models.create("resnet20")
    model.train()
    model.layer2.eval()  # mixed modes must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    bn_mean = model.bn1.running_mean.clone()
    count(model, torch.randn(2, 3, 32, 32))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert torch.equal(model.bn1.running_mean, bn_mean)  # ran in eval mode
    assert not any(m._forward_hooks for m in model.modules())


def test_count_accepts_tuple_input() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    cost = count(TwoInputs(), (torch.randn(2, 3), torch.randn(2, 5)))
    assert cost.flops == 3 * 2 + 5 * 2


def test_cost_str_and_ratio() -> None:
    cost = count(models.create("resnet20"), torch.randn(1, 3, 32, 32))
    assert str(cost) == "40.8 MFLOPs (MACs), 0.27 M params"
    assert cost.macs == cost.flops
    assert str(Cost(flops=4_089_184_256, params=25_557_032)) == "4.09 GFLOPs (MACs), 25.6 M params"
    half = Cost(flops=cost.flops // 2, params=cost.params)
    ratio = half.ratio(cost)
    assert ratio.flops == pytest.approx(0.5, abs=1e-6)
    assert ratio.params == 1.0
    assert "0.500x FLOPs" in str(ratio)
    assert format_count(850_000) == "850.0 K"
    assert format_count(12) == "12"


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4)
    )


def _sane(stats: LatencyStats, repeats: int) -> None:
    assert stats.median_ms > 0
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.repeats == repeats == len(stats.samples_ms)


def test_measure_latency_is_sane_and_restores_state() -> None:
    model = _tiny().train()
    threads = torch.get_num_threads()
    stats = measure_latency(model, torch.randn(2, 3, 8, 8), repeats=7, warmup=1, threads=1)
    _sane(stats, 7)
    assert stats.threads == 1
    assert stats.speedup is None
    assert torch.get_num_threads() == threads
    assert model.training and model[1].training
    assert "ms" in str(stats)


def test_compare_latency_self_ratio() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 8, 8)
    result = compare_latency({"a": model, "b": model}, x, repeats=15, warmup=2)
    assert list(result) == ["a", "b"]
    # No bound on the ratio itself: under load a model can time 13x slower against itself.
    assert result["a"].speedup == 1.0
    assert result["b"].speedup == pytest.approx(result["a"].median_ms / result["b"].median_ms)
    for stats in result.values():
        _sane(stats, 15)


def test_round_robin_rotates_the_order_and_times_everyone_alike() -> None:
    from prunelab.metrics.latency import _time_round_robin

    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = _time_round_robin(runners, repeats=3, warmup=1, device=torch.device("cpu"))
    assert calls == list("abc") * 2 + list("bca") + list("cab")  # warm-up, then rotating
    assert {name: len(s) for name, s in samples.items()} == dict.fromkeys("abc", 3)


def test_compare_latency_per_model_inputs_and_layouts() -> None:
    dense = models.create("resnet20", widths=(8, 16, 32))
    inputs = {"full": torch.randn(1, 3, 32, 32), "low_res": torch.randn(1, 3, 16, 16)}
    result = compare_latency(
        {"full": dense, "low_res": dense},
        inputs,
        repeats=3,
        warmup=1,
        channels_last={"full": False, "low_res": True},
    )
    assert set(result) == {"full", "low_res"}
    # The caller's model keeps its layout: channels_last works on a copy.
    assert dense.conv1.weight.is_contiguous()
    with pytest.raises(ConfigError, match="missing"):
        compare_latency({"a": dense, "b": dense}, {"a": inputs["full"]}, repeats=1)


def test_bad_repeat_counts_refused() -> None:
    with pytest.raises(ConfigError):
        measure_latency(_tiny(), torch.randn(1, 3, 8, 8), repeats=0)
    with pytest.raises(ConfigError):
        measure_latency(_tiny(), torch.randn(1, 3, 8, 8), warmup=-1)
    with pytest.raises(ConfigError):
        measure_latency(_tiny(), torch.randn(1, 3, 8, 8), threads=0)


def test_measure_train_step_leaves_model_untouched() -> None:
    model = _tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = measure_train_step(
        model, torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,)), repeats=3, warmup=1
    )
    _sane(stats, 3)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_compare_train_step_self_ratio() -> None:
    model = _tiny()
    result = compare_train_step(
        {"a": model, "b": model}, torch.randn(4, 3, 8, 8), None, repeats=9, warmup=1
    )
    assert result["a"].speedup == 1.0
    assert result["b"].speedup == pytest.approx(result["a"].median_ms / result["b"].median_ms)


@pytest.mark.parametrize("train", [False, True])
def test_best_memory_format(train: bool) -> None:
    model = _tiny()
    fmt = best_memory_format(model, torch.randn(2, 3, 8, 8), train=train, repeats=3, warmup=1)
    assert fmt in (torch.contiguous_format, torch.channels_last)
    assert model[0].weight.is_contiguous()
    flat = nn.Linear(4, 2)
    assert best_memory_format(flat, torch.randn(2, 4)) is torch.contiguous_format
