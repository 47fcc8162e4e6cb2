"""timm's Attention (ViT, DeiT) prunes by whole heads; the embedding width stays whole.

A tiny timm ViT holds the engine's contracts with timm's fused attention
(F.scaled_dot_product_attention) and with the attention timm computes by hand:
masked == pruned, planned cost == counted cost (attention matmuls included),
a saved pruned model loads identical and trains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunelab.graph import trace
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.graph.selfcheck import half_plan, randomize_norms
from prunelab.metrics import count
from prunelab.models import timm_models
from tests._contract import assert_close_rel, masked_and_pruned, pruned_and_reloaded

pytestmark = pytest.mark.skipif(
    not timm_models.installed(), reason="timm is not installed: pip install 'prunelab[timm]'"
)


def tiny_timm_vit(num_classes: int = 10, fused: bool = True) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
        num_classes=num_classes,
    )  # fmt: skip
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def _vit(fused: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(tiny_timm_vit(fused=fused)).eval()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "by-hand"])
def test_timm_vit_prunes_heads_and_mlp_width(fused: bool) -> None:
    model = _vit(fused)
    x = torch.randn(2, 3, 32, 32)
    graph = trace(model, x)
    heads = [graph.group_of(f"blocks.{i}.attn.qkv") for i in range(2)]
    mlp = [graph.group_of(f"blocks.{i}.mlp.fc1") for i in range(2)]
    assert [(g.prunable, g.size) for g in heads + mlp] == [(True, 4)] * 2 + [(True, 64)] * 2
    assert len(graph.prunable) == 4  # the embedding width (LayerNorm, residual) is whole
    plan = half_plan(graph, 0.5, seed=1)
    masked, pruned_out, pruned = masked_and_pruned(model, plan, x)
    assert_close_rel(masked, pruned_out)
    attn = pruned.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (2, 8, 16)
    assert attn.qkv.weight.shape == (48, 32) and attn.proj.weight.shape == (32, 16)
    counted = count(pruned, x[:1])
    assert (plan_cost(plan).flops, plan_cost(plan).params) == (counted.flops, counted.params)
    assert base_cost(graph).flops == count(model, x[:1]).flops


def test_timm_attention_macs_are_counted() -> None:
    """Two blocks of L = 17 tokens (16 patches and the class token), width 32, MLP 64."""
    tokens, width, mlp = 17, 32, 64
    patches = 16 * (3 * 8 * 8) * width
    block = 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * mlp
    whole = count(_vit(), torch.randn(1, 3, 32, 32))
    assert whole.flops == patches + 2 * block + width * 10
    assert whole.by_module["blocks.0.attn"] == 2 * tokens * tokens * width  # the two matmuls


class _Tokens(nn.Module):
    """Tokens (B, N, 8) through one timm Attention with the given options."""

    def __init__(self, **options: object) -> None:
        from timm.layers.attention import Attention

        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = Attention(32, 4, norm_layer=nn.LayerNorm, **options)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(x)) + 1).mean(1)


def test_gated_attention_with_qk_norm_prunes_its_gate_with_the_heads() -> None:
    torch.manual_seed(0)
    model = randomize_norms(_Tokens(gated=True, qk_norm=True, qkv_bias=True)).eval()
    x = torch.randn(2, 7, 8)
    graph = trace(model, x)
    heads = graph.group_of("attn.qkv")
    assert heads.prunable and heads.size == 4
    assert {(m.module, m.param) for m in heads.members} >= {("attn.gate", "weight")}
    plan = half_plan(graph, 0.5, seed=2)
    masked, pruned_out, pruned = masked_and_pruned(model, plan, x)
    assert_close_rel(masked, pruned_out)
    assert pruned.attn.gate.weight.shape[0] == pruned.attn.attn_dim == 16
    assert plan_cost(plan).flops == count(pruned, x[:1]).flops


def test_a_norm_over_all_heads_fixes_them() -> None:
    graph = trace(_Tokens(scale_norm=True).eval(), torch.randn(2, 7, 8))
    heads = graph.group_of("attn.qkv")
    assert not heads.prunable and "norm over all heads" in heads.reason


def test_pruned_timm_vit_saves_loads_and_trains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 3, 32, 32)
    pruned, loaded = pruned_and_reloaded(tiny_timm_vit, x, 3, tmp_path)
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))
    assert loaded.blocks[1].attn.num_heads == pruned.blocks[1].attn.num_heads == 2
    loaded.train()
    opt = torch.optim.SGD(loaded.parameters(), lr=0.1)
    before = loaded.blocks[0].attn.qkv.weight.detach().clone()
    loss = nn.functional.cross_entropy(loaded(x), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, loaded.blocks[0].attn.qkv.weight)
    again = trace(loaded.eval(), x)  # a pruned model traces again (iterative pruning)
    assert again.group_of("blocks.0.attn.qkv").size == 2
