"""A pruned model saves to one file and loads from it alone."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from prunelab import models, planners
from prunelab.errors import CorruptFileError
from prunelab.graph import prune, trace
from prunelab.io import load, read_meta, save
from tests._nets import ConvBN


def _pruned(name: str = "resnet20") -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = models.create(name).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = planners.uniform(model, trace(model, x), 0.4, criterion="l1")
    return prune(model, plan).eval(), x


@pytest.mark.parametrize("name", ["resnet20", "densenet40", "cifar_mobilenet_v2"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    pruned, x = _pruned(name)
    path = tmp_path / "m.pt"
    save(pruned, path, meta={"method": "test", "top1": 0.5})
    loaded = load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert read_meta(path)["method"] == "test"
    assert loaded.prunelab_input_size == (3, 32, 32)
    assert sum(p.numel() for p in loaded.parameters()) == sum(
        p.numel() for p in pruned.parameters()
    )


def test_blocks_replaced_by_identity_survive(tmp_path: Path) -> None:
    model, x = _pruned()
    model.layer2.set_submodule("1", nn.Identity())
    save(model, tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt")
    assert isinstance(loaded.layer2[1], nn.Identity)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_damaged_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    pruned, _ = _pruned()
    good = tmp_path / "m.pt"
    save(pruned, good)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.pt"):
        load(truncated)
    garbage = tmp_path / "noise.pt"
    garbage.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(CorruptFileError, match=r"noise\.pt"):
        load(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CorruptFileError, match="not a prunelab model"):
        load(foreign)
    with pytest.raises(CorruptFileError, match="no model file"):
        load(tmp_path / "missing.pt")


def test_models_outside_the_zoo_need_trust(tmp_path: Path) -> None:
    model = nn.Sequential(ConvBN(3, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    save(model, tmp_path / "m.pt")
    with pytest.raises(CorruptFileError, match="trust_pickle"):
        load(tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt", trust_pickle=True)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("name", ["mnasnet0_5", "mnasnet1_0"])
def test_models_with_versioned_state_dicts_round_trip(tmp_path: Path, name: str) -> None:
    """mnasnet's load_state_dict needs each module's `_version`; the file keeps them."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10).eval()
    save(model, tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_files_without_saved_versions_still_load(tmp_path: Path) -> None:
    """Files written before the versions were saved load with the rebuilt model's own."""
    model = models.create("mnasnet0_5", num_classes=10).eval()
    save(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["state_versions"]
    torch.save(payload, tmp_path / "old.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "old.pt")(x), model(x))


def test_bytes_overwritten_anywhere_are_an_error_or_harmless(tmp_path: Path) -> None:
    """A damaged file never loads silently with other weights (the CRC-32s are checked)."""
    pruned, x = _pruned()
    good = tmp_path / "m.pt"
    save(pruned, good)
    data = good.read_bytes()
    with torch.no_grad():
        expected = pruned(x)
    errors = 0
    for offset in range(0, len(data) - 16, len(data) // 41):
        damaged = bytearray(data)
        damaged[offset : offset + 16] = bytes(b ^ 0x5A for b in damaged[offset : offset + 16])
        path = tmp_path / "damaged.pt"
        path.write_bytes(bytes(damaged))
        try:
            loaded = load(path)
        except CorruptFileError as exc:
            assert "damaged.pt" in str(exc)
            errors += 1
            continue
        with torch.no_grad():  # only bytes nothing reads (alignment padding) may be harmless
            assert torch.equal(loaded(x), expected), offset
    assert errors >= 38  # nearly every byte of the file is weights or structure


def test_mid_file_damage_names_the_checksum(tmp_path: Path) -> None:
    pruned, _ = _pruned()
    path = tmp_path / "m.pt"
    save(pruned, path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="CRC-32"):
        load(path)


def test_a_folder_or_an_unreadable_file_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(CorruptFileError, match="is a folder"):
        load(tmp_path)
    pruned, _ = _pruned()
    path = tmp_path / "m.pt"
    save(pruned, path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    if os.geteuid() != 0:  # root reads any file: simulate the refusal instead
        path.chmod(0)
    else:
        monkeypatch.setattr(zipfile, "ZipFile", refuse)
    with pytest.raises(CorruptFileError, match=r"cannot read .*Permission denied"):
        load(path)
