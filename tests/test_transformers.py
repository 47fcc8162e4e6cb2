"""Vision transformers prune by MLP hidden width and whole attention heads.

Small torchvision transformers (built from their classes, not the 86 M-parameter
builders) hold the engine's contracts: masked == pruned, planned cost ==
counted cost (attention matmuls included), a saved pruned model loads
identical, and it trains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)
from torchvision.models.vision_transformer import VisionTransformer

import prunelab
from prunelab import models
from prunelab.graph import trace
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.graph.selfcheck import half_plan, randomize_norms
from prunelab.layers.attention import HeadPrunedMultiheadAttention
from prunelab.layers.window_attention import (
    HeadPrunedMaxVitAttention,
    HeadPrunedWindowAttention,
    HeadPrunedWindowAttentionV2,
)
from prunelab.metrics import count
from prunelab.models import registry
from tests._contract import assert_close_rel, masked_and_pruned


def tiny_vit(num_classes: int = 10) -> nn.Module:
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=num_classes,
    )  # fmt: skip


def tiny_swin(num_classes: int = 10, v2: bool = False) -> nn.Module:
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        num_classes=num_classes, **extra,
    )  # fmt: skip


def tiny_maxvit(num_classes: int = 10) -> nn.Module:
    return MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
        block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=num_classes,
    )  # fmt: skip


# builder, an attention module in it, its class once heads are pruned, heads before and after
WINDOWED = {
    "swin": (tiny_swin, "features.1.0.attn", HeadPrunedWindowAttention, 2, 1),
    "swin_v2": (
        lambda: tiny_swin(v2=True), "features.3.1.attn", HeadPrunedWindowAttentionV2, 4, 2,
    ),
    "maxvit": (
        tiny_maxvit, "blocks.1.layers.0.layers.grid_attention.attn_layer.1",
        HeadPrunedMaxVitAttention, 4, 2,
    ),
}  # fmt: skip


def _heads(module: nn.Module) -> int:
    return int(getattr(module, "num_heads", getattr(module, "n_heads", 0)))


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(tiny_vit()).eval()


def _groups_by_kind(graph: prunelab.graph.ChannelGraph) -> dict[str, list[int]]:
    kinds: dict[str, list[int]] = {"heads": [], "mlp": []}
    for g in graph.prunable:
        kinds["heads" if g.name.endswith("self_attention") else "mlp"].append(g.size)
    return kinds


def test_vit_prunes_heads_and_mlp_width_only() -> None:
    graph = trace(_vit(), torch.randn(1, 3, 32, 32))
    assert _groups_by_kind(graph) == {"heads": [4, 4], "mlp": [64, 64]}
    stream = graph.group_of("encoder.layers.encoder_layer_0.mlp.3")  # the residual stream
    assert not stream.prunable
    params = {m.param for m in stream.members if m.role == "param"}
    assert params == {"class_token", "pos_embedding"}


def test_vit_masked_equals_pruned_and_costs_match() -> None:
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    graph = trace(model, x)
    plan = half_plan(graph, 0.5, seed=1)
    masked, pruned_out, pruned = masked_and_pruned(model, plan, x)
    assert_close_rel(masked, pruned_out)
    attn = pruned.encoder.layers[0].self_attention
    assert type(attn) is HeadPrunedMultiheadAttention
    assert (attn.num_heads, attn.head_dim, attn.in_proj_weight.shape) == (2, 8, (48, 32))
    counted = count(pruned, x[:1])
    assert (plan_cost(plan).flops, plan_cost(plan).params) == (counted.flops, counted.params)
    assert base_cost(graph).flops == count(model, x[:1]).flops


def test_attention_macs_are_counted() -> None:
    """One block of L = 17 tokens, width 32, MLP 64: every MAC by hand."""
    model = _vit()
    tokens, width, mlp = 17, 32, 64
    patches = 16 * (3 * 8 * 8) * width
    block = 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * mlp
    assert count(model, torch.randn(1, 3, 32, 32)).flops == patches + 2 * block + width * 10


def test_pruned_vit_saves_loads_and_trains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = "_test_tiny_vit"
    models.register_model(name, input_size=(3, 32, 32))(tiny_vit)
    try:
        model = randomize_norms(models.create(name)).eval()
        x = torch.randn(2, 3, 32, 32)
        pruned = prunelab.graph.prune(model, half_plan(trace(model, x), 0.5, seed=2))
        prunelab.save(pruned, tmp_path / "model.pt")
        loaded = prunelab.load(tmp_path / "model.pt")
        with torch.no_grad():
            assert torch.equal(pruned.eval()(x), loaded(x))
        assert type(loaded.encoder.layers[1].self_attention) is HeadPrunedMultiheadAttention
        loaded.train()
        opt = torch.optim.SGD(loaded.parameters(), lr=0.1)
        before = loaded.encoder.layers[0].self_attention.in_proj_weight.detach().clone()
        loss = nn.functional.cross_entropy(loaded(x), torch.tensor([1, 2]))
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert not torch.equal(before, loaded.encoder.layers[0].self_attention.in_proj_weight)
        again = trace(loaded.eval(), x)  # a pruned model traces again (iterative pruning)
        assert _groups_by_kind(again)["heads"] == [2, 2]
    finally:
        registry._REGISTRY.pop(name)


@pytest.mark.parametrize(
    "options",
    [
        {"batch_first": True},
        {"batch_first": False, "kdim": 6, "vdim": 5},
        {"batch_first": True, "add_bias_kv": True, "add_zero_attn": True},
    ],
)
def test_head_pruned_attention_computes_what_torch_computes(options: dict) -> None:
    torch.manual_seed(0)
    dense = nn.MultiheadAttention(8, 2, **options).eval()
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_()
    same = HeadPrunedMultiheadAttention(8, 2, **options).eval()
    same.load_state_dict(dense.state_dict())
    shape = (3, 4) if options["batch_first"] else (4, 3)
    q = torch.randn(*shape, 8)
    k = torch.randn(*shape, options.get("kdim", 8))
    v = torch.randn(*shape, options.get("vdim", 8))
    pad = torch.zeros(3, 4, dtype=torch.bool)
    pad[0, -1] = True
    with torch.no_grad():
        want, w_want = dense(q, k, v, key_padding_mask=pad)
        got, w_got = same(q, k, v, key_padding_mask=pad)
    assert_close_rel(want, got, 1e-5)
    assert_close_rel(w_want, w_got, 1e-5)


def test_heads_fixed_when_per_head_weights_are_read() -> None:
    class ReadsWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, weights = self.attn(x, x, x, average_attn_weights=False)
            return self.fc(out) + weights.sum()

    graph = trace(ReadsWeights().eval(), torch.randn(2, 4, 8))
    heads = [g for g in graph.groups if g.name == "attn" and g.size == 2]
    assert len(heads) == 1 and not heads[0].prunable
    assert "attention weights" in heads[0].reason


def test_magnitude_criteria_score_heads_by_their_projection_rows() -> None:
    from prunelab.criteria.registry import get_criterion

    model = _vit()
    graph = trace(model, torch.randn(1, 3, 32, 32))
    heads = graph.group_of("encoder.layers.encoder_layer_0.self_attention")
    attn = model.encoder.layers[0].self_attention
    rows = attn.in_proj_weight.detach().abs().view(3, 4, 8, 32).sum(dim=(0, 2, 3))
    got = get_criterion("l1")(model, heads, None)
    torch.testing.assert_close(got, rows.double())


@pytest.mark.parametrize("kind", sorted(WINDOWED))
def test_window_attention_prunes_heads_and_mlp(kind: str) -> None:
    """Swin v1/v2 (shifted windows, patch merging) and MaxViT (window and grid partitions)."""
    build, attn_name, pruned_class, heads, kept = WINDOWED[kind]
    torch.manual_seed(0)
    model = randomize_norms(build()).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = trace(model, x)
    qkv = attn_name + (".to_qkv" if kind == "maxvit" else ".qkv")
    heads_group = graph.group_of(qkv)
    assert heads_group.prunable and heads_group.size == heads
    mlp_groups = [g for g in graph.prunable if "mlp" in g.name]
    assert len(mlp_groups) == 4  # one hidden layer per block
    plan = half_plan(graph, 0.5, seed=3)
    masked, pruned_out, pruned = masked_and_pruned(model, plan, x)
    assert_close_rel(masked, pruned_out)
    attn = pruned.get_submodule(attn_name)
    assert type(attn) is pruned_class and _heads(attn) == kept
    counted = count(pruned, x[:1])
    assert (plan_cost(plan).flops, plan_cost(plan).params) == (counted.flops, counted.params)
    assert base_cost(graph).flops == count(model, x[:1]).flops


def test_swin_window_attention_macs_are_counted() -> None:
    """A 32x32 input, patch 4: stage 1 has 8x8 tokens in 4 windows of 16, width 16."""
    model = tiny_swin()
    whole = count(model, torch.randn(1, 3, 32, 32)).by_module
    tokens, width, window = 64, 16, 16
    attention = tokens * 4 * width * width + 2 * tokens * window * width
    assert whole["features.1.0.attn"] == attention


@pytest.mark.parametrize("kind", ["swin_v2", "maxvit"])
def test_pruned_window_attention_saves_and_loads(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    build, attn_name, pruned_class, _, _ = WINDOWED[kind]
    name = f"_test_tiny_{kind}"
    models.register_model(name, input_size=(3, 32, 32))(lambda num_classes=10: build())
    try:
        model = randomize_norms(models.create(name)).eval()
        x = torch.randn(2, 3, 32, 32)
        pruned = prunelab.graph.prune(model, half_plan(trace(model, x), 0.5, seed=4)).eval()
        prunelab.save(pruned, tmp_path / "model.pt")
        loaded = prunelab.load(tmp_path / "model.pt")
        with torch.no_grad():
            assert torch.equal(pruned(x), loaded(x))
        assert type(loaded.get_submodule(attn_name)) is pruned_class
        loaded.train()
        loss = nn.functional.cross_entropy(loaded(x), torch.tensor([1, 2]))
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in loaded.parameters() if p.requires_grad)
    finally:
        registry._REGISTRY.pop(name)
