"""Configuration of per-scan fitting and of CondCBNT pretraining (dataclasses; the CLI is generated from them).

Each config checks its own fields in ``__post_init__`` (InputError naming the command-line
option), so the CLI, YAML configs, presets and Python callers get the same message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Literal

from nfrecon.errors import InputError
from nfrecon.fields.conditioned import BackboneConfig, ModulationConfig
from nfrecon.fields.naf import NAFFieldConfig

# --backend: see nfrecon.ops.backend
Backend = Literal["auto", "torch", "cpp", "cuda", "tcnn"]


def _need(ok: bool, option: str, what: str, value) -> None:
    """InputError ``--option: must be <what>, got <value>`` unless ``ok``."""
    if not ok:
        raise InputError(f"--{option}: must be {what}, got {value!r}")


def _at_least(obj, section: str, minimum: float, *names: str) -> None:
    """Each field in ``names`` must be a finite number >= ``minimum``."""
    for name in names:
        value = getattr(obj, name)
        option = f"{section}.{name}".strip(".").replace("_", "-")
        if isinstance(value, int):
            _need(value >= minimum, option, f">= {minimum:g}", value)
        else:
            _need(math.isfinite(value) and value >= minimum, option, f"a finite number >= {minimum:g}", value)


def _positive(obj, section: str, *names: str) -> None:
    """Each field in ``names`` must be a finite number > 0."""
    for name in names:
        value = getattr(obj, name)
        option = f"{section}.{name}".strip(".").replace("_", "-")
        _need(math.isfinite(value) and value > 0, option, "a finite number > 0", value)


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

    def __post_init__(self):
        _at_least(self, "sampling", 1, "rays_per_step", "n_samples")


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

    def __post_init__(self):
        _positive(self, "optim", "lr")
        _at_least(self, "optim", 0, "final_lr_ratio", "grad_clip")


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

    def __post_init__(self):
        f = self.holdout_fraction
        _need(math.isfinite(f) and 0 <= f < 1, "stop.holdout-fraction", "in [0, 1) (some views must be fitted)", f)
        _at_least(self, "stop", 1, "eval_every")
        _at_least(self, "stop", 0, "patience", "min_improvement", "eval_rays")


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
    format: Literal["nifti", "mha"] = "nifti"
    """File format of the exported volume: nifti (volume.nii.gz) or mha (volume.mha, MetaImage in
    ITK's LPS frame, for ITK, RTK and 3D Slicer); same values and world placement."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        _at_least(self, "output", 0, "checkpoint_every", "preview_every")
        _positive(self, "output", "mu_water")
        _need(self.format in ("nifti", "mha"), "output.format", "nifti or mha", self.format)


@dataclass
class ConditionedModelConfig:
    """Architecture of a CondCBNT model: the shared backbone and the per-scan modulation fields."""

    backbone: BackboneConfig = _field(default_factory=BackboneConfig)
    modulation: ModulationConfig = _field(default_factory=ModulationConfig)


@dataclass
class CondCBNTConfig(ConditionedModelConfig):
    """Test-time fitting with a pretrained backbone (method condcbnt).

    The backbone sizes must match the --backbone file (the CLI takes them, and the
    modulation sizes used in pretraining, from the file); a fresh modulation field is
    fitted with the learning rate of --optim.lr.
    """

    unfreeze_after: int = 0
    """Also fit the backbone from this step on (0: the backbone stays frozen)."""
    backbone_lr: float = 1e-5
    """Learning rate of the backbone once unfrozen (follows the same schedule as --optim.lr)."""

    def __post_init__(self):
        _at_least(self, "condcbnt", 0, "unfreeze_after", "backbone_lr")


@dataclass
class FitConfig:
    """Per-scan fitting of a neural field: NAF, or CondCBNT with a pretrained backbone."""

    scan: Path | None = None
    """Scan file (HDF5, see docs/scan-format.md) or a NAF .pickle; none: the built-in phantom."""
    out: Path = Path("runs/fit")
    """Run folder: volume.nii.gz, preview.png, metrics.json, config.yaml, checkpoint.pt, tb/."""
    method: Literal["naf", "condcbnt"] = "naf"
    """Field to fit: 'naf' (a fresh hash grid + MLP) or 'condcbnt' (a fresh modulation
    field over the pretrained --backbone)."""
    backbone: Path | None = None
    """Pretrained backbone (backbone.pt written by 'nfrecon pretrain'); required by condcbnt."""
    steps: int = 3000
    """Step budget (automatic stopping may end earlier)."""
    seed: int = 0
    """Seed of initialisation, ray sampling and jitter."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    backend: Backend = "auto"
    """Implementation of the hash grid and the ray march: 'torch' (pure PyTorch, the
    reference), 'cpp' (fused kernels built for the CPU), 'cuda' (fused kernels on a GPU),
    'tcnn' (tiny-cuda-nn's hash grid, where installed), 'auto' (cuda on a GPU, cpp on a CPU
    when the kernels build, else torch with a warning). 'nfrecon doctor' lists what runs here."""
    mu_max: float = 0.0
    """Upper end of the field's attenuation range in 1/mm (0: estimated from an FDK of the scan;
    condcbnt: the backbone's, which a non-zero value must equal)."""
    field: NAFFieldConfig = _field(default_factory=NAFFieldConfig)
    """NAF field (method naf)."""
    condcbnt: CondCBNTConfig = _field(default_factory=CondCBNTConfig)
    """Conditioned field (method condcbnt)."""
    sampling: SamplingConfig = _field(default_factory=SamplingConfig)
    optim: OptimConfig = _field(default_factory=OptimConfig)
    loss: LossConfig = _field(default_factory=LossConfig)
    stop: StopConfig = _field(default_factory=StopConfig)
    output: OutputConfig = _field(default_factory=OutputConfig)

    def __post_init__(self):
        _at_least(self, "", 1, "steps")
        _at_least(self, "", 0, "mu_max")

    def model_keys(self) -> tuple[str, ...]:
        """Config sections a checkpoint must agree on to be resumed (the model and its data)."""
        return ("method", "field" if self.method == "naf" else "condcbnt", "sampling", "loss", "seed")

    def require_backbone(self) -> Path:
        """The --backbone file that method condcbnt fits over; InputError when none was given."""
        if self.backbone is None:
            raise InputError("--backbone: method condcbnt needs a pretrained backbone "
                             "(backbone.pt from 'nfrecon pretrain')")
        return self.backbone


@dataclass
class PretrainOptimConfig:
    """Adam for the backbone and for every scan's modulation field, one schedule for both."""

    backbone_lr: float = 5e-5
    """Learning rate of the shared backbone (CondCBNT: 5e-5)."""
    modulation_lr: float = 1e-3
    """Learning rate of the per-scan modulation fields (CondCBNT: 1e-3)."""
    schedule: Literal["constant", "exp", "cosine"] = "exp"
    """Decay from the rates above to rate * final_lr_ratio over the step budget."""
    final_lr_ratio: float = 0.1
    """Learning rates at the last step, relative to the initial ones."""
    grad_clip: float = 1.0
    """Clip the gradient norm of the backbone and, separately, of the modulation to this (0: off)."""

    def __post_init__(self):
        _positive(self, "optim", "backbone_lr", "modulation_lr")
        _at_least(self, "optim", 0, "final_lr_ratio", "grad_clip")


@dataclass
class PretrainOutputConfig:
    """What the pretraining folder receives, and how often (rank 0 writes)."""

    checkpoint_every: int = 1000
    """Steps between checkpoints and backbone.pt (also written at the end and on Ctrl-C/SIGTERM)."""
    log_every: int = 10
    """Steps between rows of history.csv and TensorBoard scalars."""
    preview_every: int = 1000
    """Steps between TensorBoard slices of rank 0's first scan (0: never)."""
    tensorboard: bool = True
    """Write TensorBoard logs to <out>/tb."""
    progress: bool = True
    """Show a progress bar (rank 0)."""

    def __post_init__(self):
        _at_least(self, "output", 1, "checkpoint_every", "log_every")
        _at_least(self, "output", 0, "preview_every")


@dataclass
class PretrainConfig:
    """Pretraining of a CondCBNT backbone and one modulation field per training scan."""

    scans: tuple[Path, ...] = ()
    """Training scans: files, folders (every *.h5 in them) or .txt lists of files, one a line."""
    exclude_ct: tuple[Path, ...] = ()
    """Real CT volumes to hold out: every training scan made from one of them (by the digest in
    its metadata; its augmented variants included) is left out, and backbone.pt records them
    as held out. The test CTs of a leave-one-out evaluation."""
    out: Path = Path("runs/pretrain")
    """Folder: backbone.pt, checkpoint.pt (+ modulations-<step>/), config.yaml, history.csv, tb/."""
    data: Literal["projections", "voxels"] = "projections"
    """'projections': render rays, MSE on line integrals (the paper's setting); 'voxels':
    regress mu at random voxel centres of each scan's ground truth (faster; needs gt)."""
    steps: int = 20000
    """Optimisation steps; in each, every process fits one random scan of its share."""
    seed: int = 0
    """Seed of initialisation and of every step's sampling."""
    device: str = "auto"
    """'auto' (CUDA when available, one GPU per process), 'cpu', 'cuda' or 'cuda:N' (one process)."""
    backend: Backend = "auto"
    """Implementation of the hash grids and the conditioned ray march, as for 'nfrecon fit'
    (with DDP over several processes the march is not fused; the hash grids still are)."""
    mu_max: float = 0.0
    """Backbone output range in 1/mm (0: the largest per-scan estimate, as fit's)."""
    skip_bad: bool = False
    """Skip scans that cannot be read or used (reported by name) instead of stopping."""
    points_per_step: int = 16384
    """Voxel centres per step with --data voxels (CondCBNT: 16384)."""
    model: ConditionedModelConfig = _field(default_factory=ConditionedModelConfig)
    sampling: SamplingConfig = _field(default_factory=lambda: SamplingConfig(mode="all"))
    """Rays per step and samples per ray with --data projections (all rays from one scan)."""
    optim: PretrainOptimConfig = _field(default_factory=PretrainOptimConfig)
    output: PretrainOutputConfig = _field(default_factory=PretrainOutputConfig)

    def __post_init__(self):
        _at_least(self, "", 1, "steps", "points_per_step")
        _at_least(self, "", 0, "mu_max")
