"""Conditioned fields (CondCBNT): FiLM identity and algebra, gradients, shapes, box mapping, backbone files."""

import pytest
import torch

from nfrecon.errors import InputError
from nfrecon.fields.conditioned import Backbone, BackboneConfig, ConditionedField, ModulationConfig, ModulationField
from nfrecon.fields.hashgrid import HashGridConfig
from nfrecon.fields.mlp import MLPConfig
from nfrecon.fit.backbone import load_backbone, read_backbone, save_backbone
from nfrecon.fit.checkpoint import save_checkpoint
from nfrecon.geometry.volume import VolumeGeometry

BACKBONE = BackboneConfig(
    encoder=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.6),
    mlp=MLPConfig(hidden=(16, 12, 8), skips=()),
)
MODULATION = ModulationConfig(
    encoder=HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=3),
    mlp=MLPConfig(hidden=(8,), skips=(), out_activation="none"),
)
GRID = VolumeGeometry((6, 8, 10), (2.0, 1.5, 1.0), (3.0, -2.0, 1.0))
MU_MAX = 0.05


def _models(seed=0, cfg=BACKBONE):
    torch.manual_seed(seed)
    backbone = Backbone(cfg, MU_MAX)
    with torch.no_grad():  # a trained-looking table, so that every level matters
        backbone.encoder.table.uniform_(-1, 1)
    modulation = ModulationField(MODULATION, backbone.film_widths)
    return backbone, modulation


def _points(n=257, seed=1, grid=GRID):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(grid.box_min), torch.tensor(grid.box_max)
    return (lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64)).float()


def test_published_sizes_are_the_defaults():
    b, m = BackboneConfig(), ModulationConfig()
    assert ((b.encoder.n_levels, b.encoder.n_features_per_level, b.encoder.base_resolution, b.encoder.log2_hashmap_size)
            == (16, 2, 16, 19))
    assert b.mlp.hidden == (128, 128, 128) and b.mlp.activation == "leaky_relu" and b.mlp.out_activation == "sigmoid"
    assert (m.encoder.n_levels, m.encoder.base_resolution, m.encoder.log2_hashmap_size) == (12, 16, 19)
    # FiLM outputs: two values per hidden unit of the backbone
    assert m.n_params(b.film_widths) - m.encoder.n_params == (24 * 128 + 128) + 2 * (128 * 128 + 128) + (128 + 1) * 768
    with pytest.raises(InputError, match="out_activation must be 'none'"):
        ModulationConfig(mlp=MLPConfig(hidden=(8,), skips=(), out_activation="sigmoid"))


def test_fresh_modulation_is_exactly_the_identity():
    backbone, modulation = _models()
    field = ConditionedField(backbone, modulation, GRID)
    p = _points()
    u = field.to_unit(p)
    with torch.no_grad():
        plain = backbone(u)
        assert torch.equal(modulation(u), torch.zeros(len(p), 2 * sum(BACKBONE.film_widths)))
        assert torch.equal(field(p), plain)
        assert torch.equal(backbone(u, torch.zeros(len(p), 2 * 36)), plain)
    assert plain.std() > 1e-3 * MU_MAX  # the backbone is not constant: the identity is not trivial


def test_film_algebra_against_a_hand_computation():
    """dgamma = -1 on the last hidden layer kills its pre-activation, leaving only beta:
    the output is sigmoid(W_out leaky_relu(beta) + b_out) * mu_max at every point."""
    backbone, modulation = _models()
    field = ConditionedField(backbone, modulation, GRID)
    beta = torch.linspace(-1.0, 2.0, 8)
    with torch.no_grad():
        last = modulation.mlp.layers[-1]
        last.bias[16 + 16 + 12 + 12 : 16 + 16 + 12 + 12 + 8] = -1.0  # dgamma of layer 2 (width 8)
        last.bias[-8:] = beta
        out = field(_points())
        w, b = backbone.mlp.layers[-1].weight[0].double(), backbone.mlp.layers[-1].bias[0].double()
        act = torch.where(beta > 0, beta, 0.01 * beta).double()
        expected = torch.sigmoid(w @ act + b) * MU_MAX
    torch.testing.assert_close(out.double(), expected.expand(len(out)), rtol=1e-6, atol=0)
    # a beta-only modulation of the first layer shifts the pre-activation: equal to a bias change
    backbone2, modulation2 = _models()
    with torch.no_grad():
        modulation2.mlp.layers[-1].bias[16:32] = 0.25
        field2, p = ConditionedField(backbone2, modulation2, GRID), _points()
        shifted = field2(p)
        backbone2.mlp.layers[0].bias += 0.25
        torch.testing.assert_close(shifted, backbone2(field2.to_unit(p)))


def test_frozen_backbone_gets_no_gradient_and_every_modulation_parameter_does():
    backbone, modulation = _models()
    backbone.requires_grad_(False)
    field = ConditionedField(backbone, modulation, GRID)
    opt = torch.optim.SGD(modulation.parameters(), lr=0.1)
    p, target = _points(), torch.full((257,), 0.02)
    for _ in range(2):  # step 1: only the zero last layer has a gradient; step 2: all of them
        opt.zero_grad()
        ((field(p) - target) ** 2).mean().backward()
        opt.step()
    assert all(q.grad is None for q in backbone.parameters())
    assert all(q.grad is not None and q.grad.abs().max() > 0 for q in modulation.parameters())
    backbone.requires_grad_(True)
    ((field(p) - target) ** 2).mean().backward()
    assert all(q.grad is not None and q.grad.abs().max() > 0 for q in backbone.parameters())


def test_shapes_and_bad_input():
    backbone, modulation = _models()
    field = ConditionedField(backbone, modulation, GRID)
    for shape in [(3,), (5, 3), (2, 4, 3)]:
        assert field(torch.zeros(shape)).shape == shape[:-1]
    assert modulation(torch.zeros(7, 3)).shape == (7, 72)
    with pytest.raises(InputError, match="film must have 72 values"):
        backbone(torch.zeros(4, 3), torch.zeros(4, 70))
    with pytest.raises(InputError, match="points must have shape"):
        field(torch.zeros(4, 2))
    with pytest.raises(InputError, match="hidden widths"):
        ConditionedField(backbone, ModulationField(MODULATION, (16, 12)), GRID)
    with pytest.raises(InputError, match="mu_max"):
        Backbone(BACKBONE, 0.0)


def test_one_backbone_serves_grids_of_any_box():
    """Each scan's box maps to the unit cube: the same relative position gives the same mu."""
    backbone, modulation = _models()
    with torch.no_grad():
        modulation.mlp.layers[-1].weight.normal_()
    other = VolumeGeometry((20, 3, 7), (0.5, 9.0, 4.0), (-40.0, 10.0, 0.0))
    a, b = ConditionedField(backbone, modulation, GRID), ConditionedField(backbone, modulation, other)
    rel = torch.rand(100, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pa = torch.tensor(GRID.box_min) + rel * torch.tensor(GRID.size)
    pb = torch.tensor(other.box_min) + rel * torch.tensor(other.size)
    with torch.no_grad():
        torch.testing.assert_close(a(pa.float()), b(pb.float()), rtol=1e-4, atol=1e-7)


def test_backbone_file_round_trip_and_config_mismatch(tmp_path):
    backbone, _ = _models()
    cts = [{"name": "a.npz", "sha256": "ab" * 32, "scans": 2}]
    held = [{"name": "b.npz", "sha256": "cd" * 32, "scans_left_out": 4}]
    save_backbone(tmp_path / "backbone.pt", backbone, MODULATION, step=7, n_scans=3, training_cts=cts,
                  held_out_cts=held)
    info = read_backbone(tmp_path / "backbone.pt")
    assert (info.backbone == BACKBONE and info.modulation == MODULATION and info.step == 7
            and info.mu_max == pytest.approx(MU_MAX) and info.training_cts == cts and info.held_out_cts == held)
    assert info.trained_on("ab" * 32) == cts[0] and info.trained_on("cd" * 32) is None and info.trained_on(None) is None
    loaded, _ = load_backbone(tmp_path / "backbone.pt", expected=BACKBONE)
    u = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(u), backbone(u))
    wider = BackboneConfig(encoder=BACKBONE.encoder, mlp=MLPConfig(hidden=(16, 12, 9), skips=()))
    with pytest.raises(InputError, match=r"backbone.pt: .*condcbnt\.backbone\.mlp\.hidden=\[16, 12, 8\] "
                                         r"in the checkpoint, \[16, 12, 9\] now"):
        load_backbone(tmp_path / "backbone.pt", expected=wider)
    finer = BackboneConfig(encoder=HashGridConfig(n_levels=5, log2_hashmap_size=12, base_resolution=4,
                                                  per_level_scale=1.6),
                           mlp=BACKBONE.mlp)
    with pytest.raises(InputError, match=r"condcbnt\.backbone\.encoder\.n_levels=4"):
        load_backbone(tmp_path / "backbone.pt", expected=finer)
    save_checkpoint(tmp_path / "fit.pt", {"format": "nfrecon-checkpoint", "step": 3})
    with pytest.raises(InputError, match="fit.pt: not a pretrained backbone"):
        load_backbone(tmp_path / "fit.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "backbone.pt").read_bytes()[:300])
    with pytest.raises(InputError, match="cut.pt: corrupt or unreadable"):
        load_backbone(tmp_path / "cut.pt")
