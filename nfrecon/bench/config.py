"""Options of a bench run (a dataclass; ``nfrecon bench`` is generated from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nfrecon.bench.iterative import DEFAULT_LAM

MethodName = Literal["fdk", "iterative", "naf", "condcbnt", "lpd", "unet"]
NoiseName = Literal["noisy", "clean"]
METHOD_NAMES: tuple[str, ...] = MethodName.__args__
DEFAULT_METHODS = ("fdk", "iterative", "naf")  # + condcbnt / lpd / unet when their model is given


@dataclass
class BenchConfig:
    """Every method on simulated scans of CT volumes, one protocol, several conditions."""

    ct: list[Path] = field(default_factory=list)
    """CT volumes in HU (.npz with volume_hu + spacing_zyx_mm, .nii, .nii.gz); default: the
    real CTs (*.npz with volume_hu) in ../shared/data or $NFRECON_DATA."""
    out: Path = Path("runs/bench")
    """Folder for results.md/.csv/.json, curves.png, slices.png and runs/<volume>/<condition>/<method>/."""
    protocol: str = "condcbnt"
    """Protocol preset (condcbnt, naf, r2gaussian, small) or a YAML file of Protocol fields."""
    size: int | None = None
    """Scale the protocol to an N^3 grid and an N-column detector (same field of view), e.g. 64."""
    views: tuple[int, ...] = (50, 400)
    """Numbers of views (each taken from the protocol's full set: 50 of 400 = every 8th)."""
    noise: tuple[NoiseName, ...] = ("noisy", "clean")
    """Conditions: noisy (the protocol's photon count, Poisson) and/or clean (noiseless)."""
    photons: float | None = None
    """Incident photons per pixel of the noisy condition (default: the protocol's, 1e5 for
    condcbnt; e.g. 1e4 for a low-dose condition)."""
    methods: tuple[MethodName, ...] | None = None
    """Methods (default: fdk iterative naf, plus condcbnt with --backbone, lpd with --lpd-model, unet with
    --unet-model)."""
    skip: tuple[str, ...] = ()
    """METHOD:VIEWS pairs not to run, e.g. iterative:400 (the published table has no iterative
    result at 400 views, and TV there is the bench's slowest run on a CPU)."""
    steps: int | None = None
    """Step budget of every neural fit, so that they compare at equal budgets (default: each
    preset's own budget; automatic stopping may end a fit earlier)."""
    naf_preset: str = "auto"
    """NAF preset from configs/ (auto: naf on CUDA, naf-fast on CPU)."""
    condcbnt_preset: str = "condcbnt-fast"
    """CondCBNT preset from configs/ (test-time fitting of the modulation field)."""
    backbone: Path | None = None
    """Pretrained CondCBNT backbone (backbone.pt from 'nfrecon pretrain'); enables condcbnt."""
    lpd_model: Path | None = None
    """Learned primal-dual (model.pt from 'nfrecon train-learned --method lpd'); enables lpd."""
    unet_model: Path | None = None
    """FDK + U-Net (model.pt from 'nfrecon train-learned --method unet'); enables unet."""
    iterative_iters: int | None = None
    """Iterations of the iterative baseline (TV, Chambolle-Pock; default: its tuned default)."""
    lam: float = DEFAULT_LAM
    """Relative TV weight of the iterative baseline (see 'nfrecon iterative --help')."""
    curve_points: int = 20
    """PSNR evaluations of the volume during each neural fit (for curves.png; their time is not
    charged to the method)."""
    sim_step_mm: float | None = None
    """Sample step (mm) of the projector that simulates the scans on the CT's own grid (default:
    half the CT's smallest voxel; 1.0 takes 2.8x fewer samples than that for the 0.7 mm chest CT)."""
    seed: int = 0
    """Noise seed (volume i uses seed + i) and seed of the neural fits."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda' for every method."""
    backend: Literal["auto", "torch", "cpp", "cuda"] = "auto"
    """Implementation of the voxel projector (simulation, iterative baseline) and of FDK's
    backprojection: 'torch' (pure PyTorch, the reference), 'cpp' (fused kernels built for the
    CPU), 'cuda' (fused kernels on a GPU), 'auto' (cuda on a GPU, cpp on a CPU when the kernels
    build, else torch with a warning). 'nfrecon doctor' lists what runs here."""
    threads: int | None = None
    """torch threads per method (default: torch's choice)."""
    isolate: bool = True
    """Run each method in a fresh Python process, so that its peak memory (RSS) is its own."""
    jobs: int = 1
    """Methods run at the same time, each in its own process (needs isolate). On a CPU, give
    each --threads cores/jobs; the seconds per volume then include any contention between them."""
    keep_scans: bool = False
    """Keep the simulated scans (HDF5) in <out>/scans."""
