"""Configuration of per-scan fitting (dataclasses; the CLI is generated from them)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Literal, Optional

from nfrecon.fields.naf import NAFFieldConfig


@dataclass
class SamplingConfig:
    """Which rays a step uses and how they are sampled."""

    rays_per_step: int = 1024
    """Detector rays per optimisation step."""
    mode: Literal["view", "all"] = "view"
    """'view': all rays of a step come from one random training view (NAF);
    'all': random rays across all training views (CondCBNT)."""
    n_samples: int = 192
    """Samples per ray between box entry and exit (stratified, jittered)."""


@dataclass
class OptimConfig:
    """Adam and its learning-rate schedule."""

    lr: float = 1e-3
    """Initial learning rate."""
    schedule: Literal["constant", "exp", "cosine"] = "exp"
    """Decay from lr to lr * final_lr_ratio over the step budget."""
    final_lr_ratio: float = 0.1
    """Learning rate at the last step, relative to lr."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: off)."""


@dataclass
class LossConfig:
    """Data term on line integrals."""

    kind: Literal["mse", "poisson"] = "mse"
    """'mse': plain least squares; 'poisson': noise-aware weighted least squares with
    weights proportional to the expected counts I0*exp(-p) (needs the photon count)."""


@dataclass
class StopConfig:
    """Held-out views and automatic stopping."""

    holdout_fraction: float = 0.1
    """Fraction of views held out to measure the projection error (0: none, no auto-stop)."""
    eval_every: int = 100
    """Steps between held-out evaluations."""
    patience: int = 5
    """Stop after this many evaluations without a significant improvement (0: never)."""
    min_improvement: float = 0.005
    """Relative decrease of the held-out error that counts as an improvement."""
    eval_rays: int = 16384
    """Held-out rays evaluated (a fixed random subset; all if fewer)."""
    restore_best: bool = True
    """Export the state with the lowest held-out error rather than the last one."""


@dataclass
class OutputConfig:
    """What the run folder receives, and how often."""

    checkpoint_every: int = 500
    """Steps between checkpoints (one is also written at the end and on Ctrl-C)."""
    preview_every: int = 500
    """Steps between preview PNGs, TensorBoard slices and metrics (0: only at the end)."""
    tensorboard: bool = True
    """Write TensorBoard logs to <out>/tb."""
    hu: bool = False
    """Export int16 HU (with mu_water) instead of float32 mu."""
    mu_water: float = 0.0206
    """mu of water (1/mm) used for the HU export."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class FitConfig:
    """Per-scan fitting of a neural attenuation field (NAF)."""

    scan: Optional[Path] = None
    """Scan file (HDF5, see docs/scan-format.md) or a NAF .pickle; none: the built-in phantom."""
    out: Path = Path("runs/fit")
    """Run folder: volume.nii.gz, preview.png, metrics.json, config.yaml, checkpoint.pt, tb/."""
    method: Literal["naf"] = "naf"
    """Field to fit."""
    steps: int = 3000
    """Step budget (automatic stopping may end earlier)."""
    seed: int = 0
    """Seed of initialisation, ray sampling and jitter."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    mu_max: float = 0.0
    """Upper end of the field's attenuation range in 1/mm (0: estimated from an FDK of the scan)."""
    field: NAFFieldConfig = _field(default_factory=NAFFieldConfig)
    sampling: SamplingConfig = _field(default_factory=SamplingConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    loss: LossConfig = _field(default_factory=LossConfig)
    stop: StopConfig = _field(default_factory=StopConfig)
    output: OutputConfig = _field(default_factory=OutputConfig)
