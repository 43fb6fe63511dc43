"""Hash-grid encoding against a slow per-point Python reference; indexing, gradients, collisions."""

import itertools
import math

import pytest
import torch

from nfrecon.errors import InputError
from nfrecon.fields.hashgrid import HashGridConfig, HashGridEncoding

PRIMES = {"x": 1, "y": 2654435761, "z": 805459861}  # Instant-NGP's primes


def reference_encode(table: list[list[float]], cfg: HashGridConfig, point) -> list[float]:
    """One point (z, y, x), loops over levels and corners, exact Python integers for the hash."""
    u = [min(max(float(c), 0.0), 1.0) for c in point]
    out, offset = [], 0
    for n in cfg.resolutions:
        dense = (n + 1) ** 3 <= 2**cfg.log2_hashmap_size
        cells, fracs = [], []
        for c in u:
            cell = min(math.floor(c * n), n - 1)
            cells.append(cell)
            fracs.append(c * n - cell)
        feat = [0.0] * cfg.n_features_per_level
        for bz, by, bx in itertools.product((0, 1), repeat=3):
            k, j, i = cells[0] + bz, cells[1] + by, cells[2] + bx
            if dense:
                row = i + j * (n + 1) + k * (n + 1) ** 2
            else:
                row = ((i * PRIMES["x"]) ^ (j * PRIMES["y"]) ^ (k * PRIMES["z"])) % 2**cfg.log2_hashmap_size
            w = 1.0
            for b, f in zip((bz, by, bx), fracs):
                w *= f if b else 1.0 - f
            for c in range(cfg.n_features_per_level):
                feat[c] += w * table[offset + row][c]
        out.extend(feat)
        offset += (n + 1) ** 3 if dense else 2**cfg.log2_hashmap_size
    return out


# levels N = 3, 6, 12, 24: 64 and 343 vertices are dense in 2**10 rows, 2197 and 15625 are hashed
MIXED = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=3,
                       per_level_scale=2.0, init_scale=1.0)
# non-integer growth: N = 4, 6, 9, 13, 20
GROWTH = HashGridConfig(n_levels=5, n_features_per_level=3, log2_hashmap_size=11, base_resolution=4,
                        per_level_scale=1.5, init_scale=1.0)


def _test_points(gen: torch.Generator) -> torch.Tensor:
    special = [0.0, 1.0, 0.5, 0.25, 0.75, 1 / 3, 1 / 12, 5 / 24, 2 / 9, 7 / 13, 0.05, -0.3, 1.4]
    grid = torch.tensor(list(itertools.product(special[:6], special[5:], special[::2])), dtype=torch.float64)
    return torch.cat([torch.rand(200, 3, generator=gen, dtype=torch.float64), grid])


def test_level_rules():
    assert HashGridConfig().resolutions == tuple(16 * 2**level for level in range(16))
    assert MIXED.resolutions == (3, 6, 12, 24) and MIXED.dense == (True, True, False, False)
    assert MIXED.level_rows == (64, 343, 1024, 1024) and MIXED.offsets == (0, 64, 407, 1431, 2455)
    assert GROWTH.resolutions == (4, 6, 9, 13, 20)  # floor(4 * 1.5**l): 13.5 -> 13, 20.25 -> 20
    finest = HashGridConfig(n_levels=8, base_resolution=16, finest_resolution=2048)
    assert finest.resolutions == (16, 32, 64, 128, 256, 512, 1024, 2048)
    assert abs(HashGridConfig(n_levels=3, base_resolution=10, finest_resolution=90).growth - 3.0) < 1e-12
    assert HashGridEncoding(MIXED).table.shape == (2455, 2)


@pytest.mark.parametrize("cfg", [MIXED, GROWTH], ids=["mixed", "growth"])
def test_matches_per_point_reference(cfg):
    gen = torch.Generator().manual_seed(0)
    enc = HashGridEncoding(cfg).double()
    pts = _test_points(gen)
    table = enc.table.detach().tolist()
    expected = torch.tensor([reference_encode(table, cfg, p) for p in pts.tolist()], dtype=torch.float64)
    got = enc(pts)
    assert got.shape == (pts.shape[0], cfg.n_output_dims)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # float32 table and points: same function to float32 rounding (the interpolant is continuous)
    enc32 = HashGridEncoding(cfg)
    with torch.no_grad():
        enc32.table.copy_(enc.table)
    torch.testing.assert_close(enc32(pts.float()).double(), expected, rtol=0, atol=2e-5)


def test_dense_hashed_switch_at_table_size():
    """(N + 1)**3 == 2**T is still dense (one row per vertex); one more cell hashes."""
    dense = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=9, base_resolution=7)
    hashed = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=9, base_resolution=8)
    assert dense.dense == (True,) and dense.level_rows == (512,)
    assert hashed.dense == (False,) and hashed.level_rows == (512,)
    for cfg in (dense, hashed):
        n = cfg.resolutions[0]
        enc = HashGridEncoding(cfg).double()
        with torch.no_grad():
            enc.table.copy_(torch.arange(512, dtype=torch.float64)[:, None])  # feature = row number
        kji = torch.tensor(list(itertools.product(range(n + 1), repeat=3)))
        rows = enc(kji.double() / n)[:, 0].round().long()  # a vertex reads exactly its row
        k, j, i = kji.unbind(-1)
        if cfg is dense:
            assert torch.equal(rows, i + j * (n + 1) + k * (n + 1) ** 2)
            assert rows.unique().numel() == 512  # a bijection: no collisions
        else:
            want = [((a * PRIMES["x"]) ^ (b * PRIMES["y"]) ^ (c * PRIMES["z"])) % 512 for c, b, a in kji.tolist()]
            assert rows.tolist() == want


def test_colliding_vertices_share_a_row():
    cfg = HashGridConfig(n_levels=1, n_features_per_level=2, log2_hashmap_size=8, base_resolution=32, init_scale=1.0)
    n, seen, pair = 32, {}, None
    for k, j, i in itertools.product(range(n + 1), repeat=3):  # first collision, found with exact integers
        h = ((i * PRIMES["x"]) ^ (j * PRIMES["y"]) ^ (k * PRIMES["z"])) % 2**8
        if h in seen:
            pair = (seen[h], (k, j, i), h)
            break
        seen[h] = (k, j, i)
    a, b, row = pair
    enc = HashGridEncoding(cfg).double()
    pts = torch.tensor([a, b], dtype=torch.float64) / n
    out = enc(pts)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    torch.testing.assert_close(out[0], enc.table[row].detach(), rtol=0, atol=0)
    for p in range(2):  # each point's gradient touches exactly that row, with weight 1
        (g,) = torch.autograd.grad(out[p].sum(), enc.table, retain_graph=True)
        assert g.nonzero()[:, 0].unique().tolist() == [row] and torch.all(g[row] == 1)


def test_gradcheck_table_and_points():
    cfg = HashGridConfig(n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2, init_scale=1.0)
    assert cfg.dense == (True, False)
    enc = HashGridEncoding(cfg).double()
    gen = torch.Generator().manual_seed(1)
    pts = torch.rand(64, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    frac = torch.stack([(pts * n) % 1 for n in cfg.resolutions])
    pts = pts[((frac > 0.05) & (frac < 0.95)).all(-1).all(0)][:8]  # away from cell boundaries
    assert pts.shape[0] == 8
    table = enc.table.detach().clone().requires_grad_()
    pts.requires_grad_()

    def fn(tab, p):
        return torch.func.functional_call(enc, {"table": tab}, (p,))

    assert torch.autograd.gradcheck(fn, (table, pts), eps=1e-6, atol=1e-8)


def test_points_outside_are_clamped_and_shapes_kept():
    enc = HashGridEncoding(MIXED)
    pts = torch.tensor([[-0.5, 0.3, 1.7], [2.0, -1.0, 0.5]])
    torch.testing.assert_close(enc(pts), enc(pts.clamp(0, 1)), rtol=0, atol=0)
    x = torch.rand(2, 5, 3)
    assert enc(x).shape == (2, 5, MIXED.n_output_dims)
    torch.testing.assert_close(enc(x).reshape(10, -1), enc(x.reshape(10, 3)))
    with pytest.raises(InputError, match="points must have shape"):
        enc(torch.zeros(4, 2))


def test_bad_configs_are_rejected():
    for kwargs in ({"n_levels": 0}, {"log2_hashmap_size": 31}, {"base_resolution": 0}, {"per_level_scale": 0.5},
                   {"base_resolution": 16, "finest_resolution": 8}):
        with pytest.raises(InputError, match="hash grid"):
            HashGridConfig(**kwargs)


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda_device):
    enc = HashGridEncoding(MIXED)
    pts = torch.rand(1000, 3)
    out = enc(pts)
    out.sum().backward()
    enc_gpu = HashGridEncoding(MIXED).to(cuda_device)
    with torch.no_grad():
        enc_gpu.table.copy_(enc.table)
    out_gpu = enc_gpu(pts.to(cuda_device))
    out_gpu.sum().backward()
    torch.testing.assert_close(out_gpu.cpu(), out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(enc_gpu.table.grad.cpu(), enc.table.grad, rtol=1e-5, atol=1e-5)
