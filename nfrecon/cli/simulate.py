"""``nfrecon simulate``: a scan file (and its ground truth as NIfTI) from a CT or the phantom."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nfrecon.cli.common import parse, resolve_device
from nfrecon.data.nifti import write_nifti
from nfrecon.data.scan import save_scan
from nfrecon.data.sources import SOURCE_CT, ct_source
from nfrecon.data.volumes import read_ct
from nfrecon.devices import require_memory
from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_paths, check_output_file
from nfrecon.geometry.protocols import Protocol, load_protocol
from nfrecon.simulate import phantom_scan, simulate_scan

DESCRIPTION = """Simulate a cone-beam scan. The CT (HU) is converted to mu with the protocol's
mapping, forward-projected on its own grid, Poisson noise is added, and the ground truth
is resampled onto the protocol's reconstruction grid. Writes the scan (HDF5, see
docs/scan-format.md) and <out stem>_gt.nii.gz."""


@dataclass
class SimulateArgs:
    volume: str = "phantom"
    """CT volume in HU: NIfTI (.nii, .nii.gz), .npz (volume_hu + spacing_zyx_mm), MetaImage (.mha,
    .mhd), NRRD (.nrrd, .nhdr) or a folder holding one DICOM series (the last three need
    SimpleITK: pip install 'nfrecon[formats]'); or 'phantom' for the built-in 3D Shepp-Logan with
    analytic projections."""
    out: Path = Path("scan.h5")
    """Scan file to write (HDF5)."""
    protocol: str = "condcbnt"
    """Protocol preset (condcbnt, naf, r2gaussian, small; see nfrecon/geometry/protocols.py)
    or a YAML file of Protocol fields."""
    size: int | None = None
    """Scale the protocol to an N^3 grid and an N-column detector (same field of view)."""
    views: int | None = None
    """Use N of the protocol's views (every k-th when N divides their number)."""
    arc: float | None = None
    """Arc in degrees, replacing the protocol's (the number of views is kept)."""
    photons: float | None = None
    """Incident photons per pixel (default: the protocol's)."""
    noiseless: bool = False
    """Write noiseless projections (no Poisson noise)."""
    read_noise: float = 0.0
    """Gaussian read noise, standard deviation in counts."""
    seed: int = 0
    """Noise seed."""
    mu_water: float | None = None
    """mu of water in 1/mm (default: the protocol's)."""
    phantom_radius: float | None = None
    """Radius of the phantom in mm (default: 90% of the half-width of the grid)."""
    step_mm: float | None = None
    """Sample step of the projector in mm (default: half the CT's smallest voxel)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    backend: Literal["auto", "torch", "cpp", "cuda"] = "auto"
    """Implementation of the voxel projector: 'torch' (pure
    PyTorch, the reference), 'cpp' (fused kernels built for the CPU), 'cuda' (fused kernels on
    a GPU), 'auto' (cuda on a GPU, cpp on a CPU when the kernels build, else torch with a
    warning). 'nfrecon doctor' lists what runs here."""


def _photons(args: SimulateArgs, protocol: Protocol) -> float | None:
    if args.noiseless:
        return None
    photons = protocol.photons if args.photons is None else args.photons
    if not photons > 0:
        raise InputError(f"--photons: photon count must be positive, got {photons:g} "
                         "(use --noiseless for clean projections)")
    return photons


def gt_path(out: Path) -> Path:
    name = out.name
    for suffix in (".hdf5", ".h5"):
        name = name.removesuffix(suffix)
    return out.with_name(name + "_gt.nii.gz")


def main(argv: list[str], prog: str) -> int:
    args = parse(SimulateArgs, argv, prog, DESCRIPTION)
    gt = gt_path(args.out)
    check_output_file(args.out)
    check_output_file(gt, option="--out (its ground truth)")
    protocol = load_protocol(args.protocol, size=args.size, views=args.views, arc_deg=args.arc, mu_water=args.mu_water)
    photons = _photons(args, protocol)
    require_memory(protocol.memory_bytes(), f"a scan of {protocol.sizes()}", "use a smaller --size")
    geom, grid = protocol.cone_geometry(), protocol.volume_geometry()
    meta = {"protocol": protocol.to_dict(), "source": args.volume}
    if args.volume == "phantom":
        scan = phantom_scan(geom, grid, radius_mm=args.phantom_radius, mu_water=protocol.mu_water,
                            photons=photons, read_noise=args.read_noise, seed=args.seed, metadata=meta)
    else:
        hu, ct_geom = read_ct(args.volume)
        meta[SOURCE_CT] = ct_source(args.volume)
        mu = protocol.hu_to_mu(hu)
        scan = simulate_scan(mu, ct_geom, geom, grid, photons=photons, read_noise=args.read_noise, seed=args.seed,
                             step_mm=args.step_mm, device=resolve_device(args.device), metadata=meta,
                             backend=args.backend)
    with atomic_paths(args.out, gt) as (tmp_scan, tmp_gt):  # both files or neither
        save_scan(scan, tmp_scan)
        write_nifti(tmp_gt, scan.gt, scan.gt_geom)
    print(f"scan: {args.out} ({protocol.describe()})")
    print(f"ground truth: {gt}")
    return 0
