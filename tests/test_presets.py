"""Presets in configs/: every shipped preset resolves, and 'extends:' overlays its parent."""

import pytest
import yaml

from nfrecon.cli import presets
from nfrecon.cli.fit import base_config
from nfrecon.errors import InputError


def _leaves(data: dict, prefix: tuple = ()):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _same(got, want) -> bool:
    if isinstance(got, (list, tuple)):
        return isinstance(want, (list, tuple)) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(got, float) and not isinstance(want, bool):
        return got == float(want)  # YAML reads 1e-3 as a string
    return got == want if not hasattr(got, "__fspath__") else str(got) == str(want)


@pytest.mark.parametrize("name", presets.names())
def test_every_key_of_every_preset_is_in_the_resolved_fit_config(name):
    cfg = base_config(name, None, device="cpu")
    data = presets.load(name)  # 'extends:' resolved
    data.pop("pretrain", None)  # read by 'nfrecon pretrain' only
    leaves = list(_leaves(data))
    assert leaves
    for keys, want in leaves:
        got = cfg
        for key in keys:
            got = getattr(got, key)
        assert _same(got, want), f"{name}: {'.'.join(keys)} is {got!r}, the preset says {want!r}"


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


@pytest.mark.parametrize("name", [n for n in presets.names() if n.startswith("condcbnt")])
def test_every_pretraining_key_of_a_condcbnt_preset_is_in_the_resolved_pretrain_config(name):
    from nfrecon.cli.pretrain import base_config as pretrain_config
    from nfrecon.cli.pretrain import preset_overrides

    cfg = pretrain_config(name, None, device="cpu")
    leaves = list(_leaves(preset_overrides(name)))  # model: the preset's condcbnt sizes; then its pretrain section
    assert leaves
    for keys, want in leaves:
        got = cfg
        for key in keys:
            got = getattr(got, key)
        assert _same(got, want), f"{name}: {'.'.join(keys)} is {got!r}, the preset says {want!r}"
