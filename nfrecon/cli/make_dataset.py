"""``nfrecon make-dataset``: a population of simulated scans from procedural patients and augmented CTs."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import nfrecon
from nfrecon.cli.common import parse, resolve_device
from nfrecon.configio import load_yaml, merge, to_dict
from nfrecon.data.augment import AugmentConfig, augment_ct
from nfrecon.data.procedural import PatientConfig, generate_patient
from nfrecon.data.scan import save_scan
from nfrecon.data.sources import SOURCE_CT, ct_source
from nfrecon.data.volumes import read_ct
from nfrecon.devices import require_memory
from nfrecon.errors import InputError
from nfrecon.fsutil import atomic_write_text, check_output_dir
from nfrecon.geometry.protocols import load_protocol
from nfrecon.outputs.progress import progress
from nfrecon.simulate import simulate_scan

DESCRIPTION = """Simulate a population of scans for pretraining (CondCBNT backbones): procedural
patients (random thorax/abdomen anatomy, nfrecon.data.procedural), augmented real CTs
(random crop, rigid motion, elastic deformation, intensity jitter; nfrecon.data.augment),
or both (mixed: --procedural-fraction of the scans procedural, spread evenly; the CTs take
turns in the others, so each CT gets about the same number of variants). Each volume is
converted to mu with the protocol's HU mapping,
projected and given Poisson noise (nfrecon.simulate), and saved with its ground truth on
the protocol's reconstruction grid as <out>/scan_0000.h5, ... . <out>/dataset.json,
written last, lists the files with their sources (the CT's name and sha256, also in each
scan's metadata as source_ct, which 'nfrecon pretrain --exclude-ct' reads) and seeds: scan i uses
numpy SeedSequence([--seed, i]).generate_state(2) as (patient or augmentation seed, noise
seed), so the same options rebuild the same files."""

SOURCES = ("procedural", "augment", "mixed")
INDEX = "dataset.json"
_SCAN_NAME = re.compile(r"scan_\d+\.h5")


@dataclass
class MakeDatasetArgs:
    out: Path
    """Dataset folder (created): scan_0000.h5, ... and dataset.json."""
    count: int = 10
    """Number of scans."""
    source: str = "procedural"
    """procedural, augment (the --ct volumes, in turn) or mixed (procedural patients and augmented CTs)."""
    procedural_fraction: float = 0.5
    """With --source mixed: the fraction of the scans that are procedural patients (0.5:
    alternately, procedural first)."""
    ct: tuple[Path, ...] = ()
    """Real CT volumes in HU to augment: NIfTI (.nii, .nii.gz), .npz (volume_hu + spacing_zyx_mm),
    MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr) or folders each holding one DICOM series."""
    protocol: str = "small"
    """Protocol preset (condcbnt, naf, r2gaussian, small) or a YAML file of Protocol fields."""
    size: int | None = None
    """Scale the protocol to an N^3 grid and an N-column detector (same field of view)."""
    views: int | None = None
    """Use N of the protocol's views."""
    photons: float | None = None
    """Incident photons per pixel (default: the protocol's)."""
    noiseless: bool = False
    """Noiseless projections."""
    seed: int = 0
    """Seed of the whole set (each scan's seeds derive from it and the scan's index)."""
    oversample: int = 1
    """Make each volume on a grid this many times finer (per axis) than the reconstruction grid
    and project it from there (the ground truth is still on the reconstruction grid)."""
    table: bool = False
    """Give procedural patients a couch (a slab below the body)."""
    patient_config: Path | None = None
    """YAML of PatientConfig fields (nfrecon/data/procedural/config.py) over the defaults; the grid and
    field of view always come from the protocol."""
    augment_config: Path | None = None
    """YAML of AugmentConfig fields (nfrecon/data/augment.py) over the defaults."""
    overwrite: bool = False
    """Replace a dataset already in --out."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda' (for the projections)."""


def _check(args: MakeDatasetArgs) -> None:
    if args.source not in SOURCES:
        raise InputError(f"--source: unknown source {args.source!r}; known: {', '.join(SOURCES)}")
    if args.count < 1:
        raise InputError(f"--count: must be >= 1, got {args.count}")
    if args.oversample < 1:
        raise InputError(f"--oversample: must be >= 1, got {args.oversample}")
    if args.source != "procedural" and not args.ct:
        raise InputError(f"--ct: --source {args.source} needs at least one CT volume to augment")
    if args.source == "procedural" and args.ct:
        raise InputError("--ct: CT volumes are only used with --source augment or mixed")
    if not 0.0 <= args.procedural_fraction <= 1.0:
        raise InputError(f"--procedural-fraction: must lie in [0, 1], got {args.procedural_fraction}")
    check_output_dir(args.out)
    if (args.out / INDEX).exists() and not args.overwrite:
        raise InputError(f"{args.out}: already holds a dataset ({INDEX}); use --overwrite to replace it")


def _config(default, path: Path | None):
    """``default`` with the fields of the YAML file ``path`` (errors name the file and field)."""
    return default if path is None else merge(default, load_yaml(path), str(path))


def _read_cts(paths) -> list[dict]:
    """Each CT read once: path, source_ct record (name, sha256 of its file or a DICOM folder's
    files), HU volume and geometry (read_ct names the file on errors)."""
    cts = []
    for path in paths:
        hu, geom = read_ct(path)
        source = ct_source(path)
        cts.append({"path": Path(path), "source": source, "sha256": source["sha256"], "hu": hu, "geom": geom})
    return cts


def _kinds(args: MakeDatasetArgs) -> list[int | None]:
    """Per scan: None for a procedural patient, else the index of the CT to augment."""
    if args.source == "procedural":
        return [None] * args.count
    if args.source == "augment":
        return [i % len(args.ct) for i in range(args.count)]
    f, kinds = args.procedural_fraction, []
    for i in range(args.count):  # procedural where round(f i) steps up: spread evenly (f = 0.5: 0, 2, 4, ...)
        procedural = int(f * (i + 1) + 0.5) > int(f * i + 0.5)
        kinds.append(None if procedural else sum(k is not None for k in kinds) % len(args.ct))
    return kinds


def _seeds(seed: int, index: int) -> tuple[int, int]:
    """(volume seed, noise seed) of scan ``index``."""
    a, b = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(a), int(b)


def main(argv: list[str], prog: str) -> int:
    args = parse(MakeDatasetArgs, argv, prog, DESCRIPTION)
    if args.seed < 0:
        raise InputError(f"--seed: must be >= 0, got {args.seed}")
    _check(args)
    protocol = load_protocol(args.protocol, size=args.size, views=args.views)
    photons = None if args.noiseless else (protocol.photons if args.photons is None else args.photons)
    if photons is not None and not photons > 0:
        raise InputError(f"--photons: photon count must be positive, got {photons:g} "
                         "(use --noiseless for clean projections)")
    require_memory(protocol.memory_bytes(args.oversample), f"each scan of {protocol.sizes(args.oversample)}",
                   "use a smaller --size or --oversample")
    device = resolve_device(args.device)
    cts = _read_cts(args.ct)
    geom, recon = protocol.cone_geometry(), protocol.volume_geometry()
    grid = recon.with_shape(tuple(n * args.oversample for n in recon.shape))
    patient_cfg = _config(PatientConfig(), args.patient_config)
    patient_cfg = dataclasses.replace(patient_cfg, shape=grid.shape, voxel_size=grid.voxel_size, center=grid.center,
                                      fov_radius_mm=0.95 * protocol.fov_radius(), table=args.table or patient_cfg.table)
    augment_cfg = _config(AugmentConfig(), args.augment_config)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / INDEX).unlink(missing_ok=True)  # no stale index while the scans are rewritten
    width = max(4, len(str(args.count - 1)))
    entries, fov_losses = [], []
    with progress(args.count, desc="make-dataset", unit="scan") as bar:
        for i, kind in enumerate(_kinds(args)):
            volume_seed, noise_seed = _seeds(args.seed, i)
            entry, meta = {"file": f"scan_{i:0{width}d}.h5", "index": i}, {}
            if kind is None:
                hu, vol_geom = generate_patient(volume_seed, patient_cfg)
                entry.update(source="procedural", patient_seed=volume_seed)
            else:
                ct = cts[kind]
                hu, vol_geom = augment_ct(ct["hu"], ct["geom"], volume_seed, augment_cfg, grid), grid
                entry.update(source="augment", ct=ct["path"].name, ct_sha256=ct["sha256"], augment_seed=volume_seed)
                meta[SOURCE_CT] = ct["source"]
            entry["noise_seed"] = noise_seed
            with warnings.catch_warnings():  # one summary below instead of a warning per scan
                warnings.filterwarnings("ignore", message="volume outside the field of view")
                warnings.filterwarnings("ignore", message=".* of the object lies outside the reconstruction box")
                scan = simulate_scan(protocol.hu_to_mu(hu), vol_geom, geom, recon, photons=photons, seed=noise_seed,
                                     device=device, metadata={"protocol": protocol.to_dict(), "dataset": entry, **meta})
            save_scan(scan, args.out / entry["file"])
            entry.update(outside_fov=scan.metadata["outside_fov"], outside_recon_box=scan.metadata["outside_recon_box"])
            fov_losses.append(entry["outside_fov"])
            entries.append(entry)
            bar.update(1)

    names = {e["file"] for e in entries}
    stale = sorted(p for p in args.out.iterdir() if _SCAN_NAME.fullmatch(p.name) and p.name not in names)
    if stale and args.overwrite:
        for p in stale:
            p.unlink()
    elif stale:
        warnings.warn(f"{args.out}: {len(stale)} older scan file(s) ({stale[0].name}, ...) are not part of this "
                      "dataset; remove them before pretraining on the folder", stacklevel=2)
    index = {
        "format": "nfrecon-dataset",
        "version": 1,
        "software": f"nfrecon {nfrecon.__version__}",
        "count": args.count,
        "source": args.source,
        "seed": args.seed,
        "seed_rule": "volume_seed, noise_seed = numpy.random.SeedSequence([seed, index]).generate_state(2)",
        "protocol": protocol.to_dict(),
        "noise": {"photons": photons, "read_noise": 0.0},
        "volume_grid": grid.to_dict(),
        "recon_grid": recon.to_dict(),
        "procedural": to_dict(patient_cfg) if args.source != "augment" else None,
        "augment": to_dict(augment_cfg) if args.source != "procedural" else None,
        "cts": [{"file": str(ct["path"]), "sha256": ct["sha256"], "geometry": ct["geom"].to_dict(),
                 "scans": sum(e.get("ct_sha256") == ct["sha256"] for e in entries)} for ct in cts],
        "procedural_scans": sum(e["source"] == "procedural" for e in entries),
        "options": to_dict(args),
        "scans": entries,
    }
    atomic_write_text(args.out / INDEX, json.dumps(index, indent=1) + "\n")
    lost = max(fov_losses)
    if lost > 0:
        warnings.warn(f"parts of the objects lie outside the field of view (missed by some views): up to "
                      f"{100 * lost:.1f}% (mean {100 * float(np.mean(fov_losses)):.1f}%) of an object; the numbers "
                      f"per scan are in {INDEX}", stacklevel=2)
    print(f"{args.count} scans in {args.out}/ ({protocol.describe()}); index: {args.out / INDEX}")
    return 0
