"""How many of CHEX's managed layers fall back from column subset selection to l1, per source.

CSS needs a matrix with at least as many rows as channels. For each model the
script traces it, picks the groups CHEX manages (residual shortcuts left whole,
the paper's default), builds each group's matrices for every `css_source`
(`prunelab.methods.chex_features`) on 64 real CIFAR-10 (JPEG) test images
resized to the model's input, and counts the groups that end at l1. In the
``weights`` (reference) source it also counts producing layers, the unit of
issue 19's "35 of 37". Models are freshly initialised (no weights can be
downloaded): the counts depend on shapes and ranks, not on training.

    PRUNELAB_DATA=/work/shared/data python bench/chex_fallbacks.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import prunelab
from prunelab.data import build_data
from prunelab.methods import chex_features as feat
from prunelab.methods.chex import ChexCallback, ChexOptions

MODELS = {  # name -> input resolution
    "resnet50": 224,
    "mobilenet_v2": 224,
    "efficientnet_b0": 224,
    "cifar_mobilenet_v2": 32,
    "resnet56": 32,
}


def images(n: int, size: int) -> torch.Tensor:
    data = build_data("cifar10_jpg", batch_size=n, augment=False)
    x = next(iter(data.test))[0][:n]
    return x if size == 32 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def count(name: str, size: int, n_images: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = prunelab.create(name).eval()
    x = images(n_images, size)
    graph = prunelab.trace(model, x[:1])
    cb = ChexCallback(graph, 0.5, "flops", ChexOptions())
    cb._choose_groups(model)
    groups = [graph.groups[g] for g in cb.groups]
    names = [c for g in groups for c in feat.consumers(g, model)]
    rows = max(4096, 2 * max(g.size for g in groups))
    features = feat.capture_inputs(model, names, x, rows)
    weights = {k: getattr(model.get_submodule(k[0]), k[1]) for g in groups
               for k in {(m.module, m.param) for m in g.members}}
    row: dict[str, object] = {"model": name, "managed_groups": len(groups)}
    layers = [x for g in groups for _, x in feat.weight_matrices(weights, g)]
    row["managed_layers"] = len(layers)
    row["weights_wide_layers"] = sum(not feat.is_tall(m) for m in layers)
    for source in feat.SOURCES:
        used = [feat.group_matrices(source, g, weights, features)[1] for g in groups]
        row[source] = {u: used.count(u) for u in sorted(set(used))}
        row[f"{source}_l1_groups"] = used.count("l1")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [count(m, MODELS.get(m, 224), args.images) for m in args.models]
    print("| model | managed groups (layers) | reference: wide layers / groups at l1 "
          "| auto: groups at l1 (sources) | features | stacked |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['managed_groups']} ({r['managed_layers']}) "
              f"| {r['weights_wide_layers']} / {r['weights_l1_groups']} "
              f"| {r['auto_l1_groups']} {r['auto']} | {r['features_l1_groups']} {r['features']} "
              f"| {r['stacked_l1_groups']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
