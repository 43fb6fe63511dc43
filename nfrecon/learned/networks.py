"""The learned reconstructors: a reversible learned primal-dual (LIRE-style) and FDK + 3D U-Net.

Both map one scan's :class:`~nfrecon.learned.operator.ScanOperator` to a normalised volume
(units of ``MU_SCALE``; [z, y, x]).

**Learned primal-dual** (Adler & Öktem 2018, with the invertible memory design of LIRE,
Moriakov et al. 2022). The state is a primal memory ``f`` of ``primal_channels`` volumes
and a dual memory ``h`` of ``dual_channels`` projection stacks, each split in halves
``(fa, fb)``, ``(ha, hb)``. Channel 0 of ``fa`` is the image; it starts as FDK, the rest at 0.
Each of the K iterations is two additive-coupling steps (:mod:`nfrecon.learned.reversible`):

- dual: with ``c = [A_n(fa_0), g]``, ``ha += Gamma_a([hb, c])``, then ``hb += Gamma_b([ha, c])``;
  Gamma: 2D convolutions applied to every view ([view, channel, v, u]);
- primal: with ``b = A_n^T(ha_0)``, ``fa += Lambda_a([fb, b])``, then ``fb += Lambda_b([fa, b])``;
  Lambda: 3D convolutions over the volume.

Each CNN is conv3-PReLU-conv3-PReLU-conv3 with ``width`` hidden channels, its last layer
initialised to zero, so an untrained network returns the FDK volume. With
``memory_saving`` the iterations run through :func:`reversible_sequence`: training memory
does not grow with K. Without gradients, a Lambda on a volume of more than ``tile_voxels``
voxels runs on z-slabs with a halo of 3 slices (its receptive field), which gives the same
result as one pass.

**FDK + U-Net** (post-processing, as FBPConvNet, Jin et al. 2017): ``fdk + U(fdk)``, a 3D
U-Net of ``len(widths)`` levels (two conv3-PReLU per level, 2x max-pooling down, transposed
convolution up, skip connections by concatenation), last layer zero-initialised. Grids
whose sides are not multiples of ``2^(levels-1)`` are padded by replication and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nfrecon.learned.operator import ScanOperator
from nfrecon.learned.reversible import ReversibleStep, reversible_sequence

HALO = 3  # slices of context a Lambda needs on each side: three 3x3x3 convolutions


def _cnn(conv, n_in: int, n_out: int, width: int) -> nn.Sequential:
    """conv3-PReLU-conv3-PReLU-conv3 with a zero last layer (the update starts as 0)."""
    net = nn.Sequential(conv(n_in, width, 3, padding=1), nn.PReLU(width), conv(width, width, 3, padding=1),
                        nn.PReLU(width), conv(width, n_out, 3, padding=1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def tiled(net: nn.Module, x: torch.Tensor, max_voxels: int, halo: int = HALO) -> torch.Tensor:
    """``net(x)`` for x (1, C, nz, ny, nx), computed on z-slabs of at most ``max_voxels`` voxels
    (plus ``halo`` slices each side) when x is larger; equal to one pass for a network whose
    receptive field reaches ``halo`` slices."""
    nz = x.shape[2]
    per_slice = x.shape[3] * x.shape[4]
    step = max(1, max_voxels // per_slice - 2 * halo)
    if step >= nz:
        return net(x)
    parts = []
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        lo, hi = max(0, z0 - halo), min(nz, z1 + halo)
        parts.append(net(x[:, :, lo:hi])[:, :, z0 - lo:z1 - lo])
    return torch.cat(parts, dim=2)


class _Context:
    """The scan the steps of one forward pass work on (set by the network, read by its steps)."""

    op: ScanOperator | None = None
    tile_voxels: int = 2**24


class DualStep(ReversibleStep):
    """ha += Gamma_a([hb, A_n fa_0, g]); hb += Gamma_b([ha, A_n fa_0, g]) (2D, per view)."""

    def __init__(self, ctx: _Context, half: int, width: int):
        super().__init__()
        self.ctx = ctx
        self.gamma_a = _cnn(nn.Conv2d, half + 2, half, width)
        self.gamma_b = _cnn(nn.Conv2d, half + 2, half, width)

    def _given(self, fa: torch.Tensor) -> torch.Tensor:
        op = self.ctx.op
        return torch.stack([op.forward(fa[0, 0]), op.g], dim=1)  # (views, 2, v, u)

    def forward(self, state):
        fa, fb, ha, hb = state
        c = self._given(fa)
        ha = ha + self.gamma_a(torch.cat([hb, c], dim=1))
        hb = hb + self.gamma_b(torch.cat([ha, c], dim=1))
        return fa, fb, ha, hb

    def inverse(self, state):
        fa, fb, ha, hb = state
        c = self._given(fa)
        hb = hb - self.gamma_b(torch.cat([ha, c], dim=1))
        ha = ha - self.gamma_a(torch.cat([hb, c], dim=1))
        return fa, fb, ha, hb


class PrimalStep(ReversibleStep):
    """fa += Lambda_a([fb, A_n^T ha_0]); fb += Lambda_b([fa, A_n^T ha_0]) (3D)."""

    def __init__(self, ctx: _Context, half: int, width: int):
        super().__init__()
        self.ctx = ctx
        self.lambda_a = _cnn(nn.Conv3d, half + 1, half, width)
        self.lambda_b = _cnn(nn.Conv3d, half + 1, half, width)

    def _given(self, ha: torch.Tensor) -> torch.Tensor:
        return self.ctx.op.adjoint(ha[:, 0])[None, None]  # (1, 1, nz, ny, nx)

    def _net(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net(x) if torch.is_grad_enabled() else tiled(net, x, self.ctx.tile_voxels)

    def forward(self, state):
        fa, fb, ha, hb = state
        b = self._given(ha)
        fa = fa + self._net(self.lambda_a, torch.cat([fb, b], dim=1))
        fb = fb + self._net(self.lambda_b, torch.cat([fa, b], dim=1))
        return fa, fb, ha, hb

    def inverse(self, state):
        fa, fb, ha, hb = state
        b = self._given(ha)
        fb = fb - self._net(self.lambda_b, torch.cat([fa, b], dim=1))
        fa = fa - self._net(self.lambda_a, torch.cat([fb, b], dim=1))
        return fa, fb, ha, hb


class LearnedPrimalDual(nn.Module):
    """K unrolled primal-dual iterations (module docstring); ``forward(op)`` -> (nz, ny, nx)."""

    def __init__(self, iterations: int = 8, primal_channels: int = 6, dual_channels: int = 4, width: int = 8,
                 memory_saving: bool = True, tile_voxels: int = 2**24):
        super().__init__()
        self.ctx = _Context()
        self.ctx.tile_voxels = tile_voxels
        self.half_p, self.half_d = primal_channels // 2, dual_channels // 2
        self.memory_saving = memory_saving
        self.steps = nn.ModuleList()
        for _ in range(iterations):
            self.steps.append(DualStep(self.ctx, self.half_d, width))
            self.steps.append(PrimalStep(self.ctx, self.half_p, width))

    def forward(self, op: ScanOperator) -> torch.Tensor:
        self.ctx.op = op  # kept until the next call: the memory-saving backward needs it
        vol, g = op.fdk, op.g
        fa = torch.zeros((1, self.half_p, *vol.shape), dtype=vol.dtype, device=vol.device)
        fa[0, 0] = vol
        fb = torch.zeros_like(fa)
        ha = torch.zeros((g.shape[0], self.half_d, *g.shape[1:]), dtype=g.dtype, device=g.device)
        state = reversible_sequence(list(self.steps), (fa, fb, ha, torch.zeros_like(ha)), self.memory_saving)
        return state[0][0, 0]


class UNet3d(nn.Module):
    """``fdk + U(fdk)`` (module docstring); ``forward(op)`` -> (nz, ny, nx)."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.widths = tuple(widths)
        self.down = nn.ModuleList()
        n_in = 1
        for w in self.widths:
            self.down.append(self._block(n_in, w))
            n_in = w
        self.up = nn.ModuleList(nn.ConvTranspose3d(w, v, 2, stride=2)
                                for w, v in zip(self.widths[:0:-1], self.widths[-2::-1]))
        self.merge = nn.ModuleList(self._block(2 * v, v) for v in self.widths[-2::-1])
        self.head = nn.Conv3d(self.widths[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _block(n_in: int, n_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv3d(n_in, n_out, 3, padding=1), nn.PReLU(n_out),
                             nn.Conv3d(n_out, n_out, 3, padding=1), nn.PReLU(n_out))

    def forward(self, op: ScanOperator) -> torch.Tensor:
        vol = op.fdk
        m = 2 ** (len(self.widths) - 1)
        pad = [(-s) % m for s in vol.shape]
        x = F.pad(vol[None, None], (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        out = self.head(x)[0, 0, :vol.shape[0], :vol.shape[1], :vol.shape[2]]
        return vol + out
