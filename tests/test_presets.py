"""Presets in configs/: every shipped preset resolves, and 'extends:' overlays its parent."""

import pytest
import yaml

from nfrecon.cli import presets
from nfrecon.cli.fit import base_config
from nfrecon.errors import InputError


@pytest.mark.parametrize("name", presets.names())
def test_every_shipped_preset_resolves_to_a_fit_config(name):
    cfg = base_config(name, None, device="cpu")
    data = presets.load(name)
    assert cfg.steps == data.get("steps", cfg.steps) and cfg.method == data.get("method", "naf")


def test_extends_overlays_the_parent_recursively(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "CONFIG_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"steps": 10, "optim": {"lr": 0.1, "schedule": "exp"}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"extends": "a", "optim": {"lr": 0.5}}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"extends": "b", "steps": 30}))
    assert presets.load("c") == {"steps": 30, "optim": {"lr": 0.5, "schedule": "exp"}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"extends": "c"}))
    with pytest.raises(InputError, match=r"cycle \(c -> b -> a -> c\)"):
        presets.load("c")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"extends": "nope"}))
    with pytest.raises(InputError, match="unknown preset 'nope'"):
        presets.load("d")


def test_condcbnt_fast_tune_is_condcbnt_fast_with_the_backbone_unfrozen():
    read = lambda name: yaml.safe_load((presets.CONFIG_DIR / f"{name}.yaml").read_text())  # noqa: E731
    parent, child = read("condcbnt-fast"), read("condcbnt-fast-tune")
    assert child.pop("extends") == "condcbnt-fast"
    expect = {**parent, "condcbnt": {**parent["condcbnt"], **child["condcbnt"]}}
    assert presets.load("condcbnt-fast-tune") == expect
    assert expect["condcbnt"]["unfreeze_after"] > 0
