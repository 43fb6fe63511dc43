"""Presets in configs/: every shipped preset resolves and describes itself, 'extends:' overlays
its parent, and the options that choose the layers are read from the command line."""

import pytest
import yaml

from nfrecon.errors import InputError
from nfrecon.fit import presets
from nfrecon.fit.config import FitConfig


def base_config(name, config=None, device="cpu"):
    return presets.fit_config(name, config, device).config


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
    cfg = base_config(name)
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
    parent, child = (yaml.safe_load(presets.path(name).read_text()) for name in ("condcbnt-fast", "condcbnt-fast-tune"))
    assert child.pop("extends") == "condcbnt-fast"
    parent.pop("description"), child.pop("description")
    expect = {**parent, "condcbnt": {**parent["condcbnt"], **child["condcbnt"]}}
    assert presets.load("condcbnt-fast-tune") == expect
    assert expect["condcbnt"]["unfreeze_after"] > 0


@pytest.mark.parametrize("name", [n for n in presets.names() if n.startswith("condcbnt")])
def test_every_pretraining_key_of_a_condcbnt_preset_is_in_the_resolved_pretrain_config(name):
    cfg = presets.pretrain_config(name, None, device="cpu").config
    # model: the preset's condcbnt sizes; then its pretrain section
    leaves = list(_leaves(presets.pretrain_overrides(name)))
    assert leaves
    for keys, want in leaves:
        got = cfg
        for key in keys:
            got = getattr(got, key)
        assert _same(got, want), f"{name}: {'.'.join(keys)} is {got!r}, the preset says {want!r}"


# configs/naf-best.yaml as it was written out in full, before it became 'extends: naf-fast'
NAF_BEST = {
    "steps": 4000,
    "field": {
        "encoder": {"n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 16, "base_resolution": 8,
                    "per_level_scale": 1.5},
        "mlp": {"hidden": [32, 32, 32], "skips": [2], "activation": "leaky_relu", "out_activation": "sigmoid"},
    },
    "sampling": {"rays_per_step": 1024, "mode": "all", "n_samples": 64},
    "optim": {"lr": 0.01, "schedule": "exp", "final_lr_ratio": 0.1},
    "loss": {"kind": "poisson"},
    "output": {"checkpoint_every": 500, "preview_every": 500},
    "stop": {"eval_every": 200, "patience": 5},
}


def test_naf_best_extends_naf_fast_and_resolves_as_it_did_written_in_full():
    assert yaml.safe_load(presets.path("naf-best").read_text())["extends"] == "naf-fast"
    assert presets.load("naf-best") == NAF_BEST


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_has_a_one_line_description_the_loader_leaves_out(name):
    text = presets.description(name)
    assert text and "\n" not in text and len(text) <= 120, text
    assert "description" not in presets.load(name) and "extends" not in presets.load(name)


def test_a_description_is_not_inherited(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "CONFIG_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("description: the parent\nsteps: 10\n")
    (tmp_path / "b.yaml").write_text("extends: a\nsteps: 20\n")
    assert presets.description("a") == "the parent" and presets.description("b") == ""
    assert presets.load("b") == {"steps": 20}


def test_pretraining_lists_the_presets_that_configure_condcbnt():
    listed = presets.pretraining_names()
    assert listed == [n for n in presets.names() if n.startswith("condcbnt")]
    assert "condcbnt-fast-tune" in listed  # its condcbnt and pretrain sections come from condcbnt-fast


def test_layer_choices_are_the_given_values_only_the_last_one_winning():
    argv = ["--steps", "3", "--preset=naf", "--device", "cpu", "--config", "run.yaml", "--preset", "naf-best",
            "--sampling.rays-per-step", "8", "--backbone"]
    assert presets.layer_choices(argv) == {"preset": "naf-best", "device": "cpu", "config": "run.yaml"}
    assert presets.layer_choices(["--method", "condcbnt", "--out", "x"], ("preset", "device")) == {}
    assert presets.layer_choices([]) == {}


def test_the_builders_carry_the_preset_they_resolved(tmp_path):
    layered = presets.fit_config(device="cpu")  # no --preset: auto
    assert layered.preset == "naf-fast" and layered.config == base_config("naf-fast")
    assert presets.fit_config("none").preset is None and presets.fit_config("none").preset_name == "none"
    assert presets.fit_config("none").config == FitConfig()
    (tmp_path / "run.yaml").write_text("method: condcbnt\ndevice: cpu\nsteps: 7\n")
    layered = presets.fit_config(config=tmp_path / "run.yaml")  # auto takes the config's method and device
    assert layered.preset == "condcbnt-fast" and layered.config.steps == 7 and layered.config.method == "condcbnt"
    assert presets.pretrain_config(device="cpu").preset == "condcbnt-fast"
