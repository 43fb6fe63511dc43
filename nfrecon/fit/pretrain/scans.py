"""The training scans of a pretraining job: which files, which rank reads which, what they
must hold, and the attenuation range they share.

- ``--scans`` items are scan files (nfrecon HDF5 or NAF .pickle), folders (their scan
  files, sorted by name) or .txt lists (one path a line, relative to the list's folder,
  ``#`` comments); a file listed twice is refused.
- Held-out CTs (``--exclude-ct``): every scan whose metadata names one of those CTs as its
  source (by digest, :mod:`nfrecon.data.sources`) is left out before sharding; the CTs behind
  the remaining scans and the held-out ones are recorded in backbone.pt.
- Sharding: rank r of N owns scans r, r+N, r+2N, ... of that list and reads only those.
  Every rank learns which scans (on any rank) could not be used, so all stop with the same
  message, or all skip the same ones with ``--skip-bad``; a rank left without a scan stops
  the job.
- A training scan needs a reconstruction grid, and with ``--data voxels`` a ground truth;
  its noiseless projections (``clean``) are dropped after reading (training never reads them).
- The backbone's range mu_max (1/mm) is ``--mu-max``, or the largest per-scan estimate over
  all ranks (1.25 x the 99.9th percentile of the ground truth with ``--data voxels``, of a
  coarse FDK otherwise); the mean attenuation it starts near is the mean of the scans' means.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nfrecon.data.scan import Scan, load_scan_metadata
from nfrecon.data.sources import SOURCE_CT, ct_source, source_sha256
from nfrecon.errors import InputError
from nfrecon.fit.distributed import Dist
from nfrecon.fit.inputs import read_scan
from nfrecon.fit.scan_stats import estimate_mu_max, mean_attenuation, volume_mu_max

SCAN_SUFFIXES = (".h5", ".hdf5", ".pickle", ".pkl")


def resolve_scan_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """The training scan files: each item a scan file, a folder (its scan files, sorted)
    or a .txt list (one path a line, relative to the list's folder; # comments)."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in SCAN_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{item}: no scan files ({', '.join(SCAN_SUFFIXES)}) in this folder")
            out += found
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [ln.split("#")[0].strip() for ln in item.read_text().splitlines()]
            out += [p if p.is_absolute() else item.parent / p for p in map(Path, filter(None, lines))]
        elif item.is_file():
            out.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    if not out:
        raise InputError("--scans: no training scans given")
    seen, unique = set(), []
    for p in out:
        key = os.path.normpath(p)
        if key in seen:
            raise InputError(f"{p}: listed twice in --scans")
        seen.add(key)
        unique.append(p)
    return unique


@dataclass
class Population:
    """The training scans after holding out CTs, and the real CTs behind them."""

    paths: list[Path]
    """Scans to train on, in --scans order."""
    training_cts: list[dict]
    """{"name", "sha256", "scans"} of every real CT some training scan was made from."""
    held_out: list[dict]
    """{"name", "sha256", "scans_left_out"} of every --exclude-ct volume."""


def _scan_source(path: Path) -> dict | None:
    """The source_ct record of a scan file (None: none, a NAF pickle, or unreadable: load_shard reports that)."""
    if path.suffix.lower() not in (".h5", ".hdf5"):
        return None
    try:
        metadata = load_scan_metadata(path)
    except InputError:
        return None
    return metadata.get(SOURCE_CT) if source_sha256(metadata) else None


def hold_out(paths: list[Path], exclude_ct: Sequence[str | os.PathLike]) -> Population:
    """Leave out of ``paths`` every scan made from one of the ``exclude_ct`` volumes (warns for
    a held-out CT no scan was made from: nothing to leave out)."""
    held = {rec["sha256"]: {**rec, "scans_left_out": 0} for rec in map(ct_source, exclude_ct)}
    kept, cts = [], {}
    for path in paths:
        source = _scan_source(path)
        if source is not None and source["sha256"] in held:
            held[source["sha256"]]["scans_left_out"] += 1
            continue
        kept.append(path)
        if source is not None:
            cts.setdefault(source["sha256"], {"name": source["name"], "sha256": source["sha256"], "scans": 0})
            cts[source["sha256"]]["scans"] += 1
    for rec in held.values():
        if rec["scans_left_out"] == 0:
            warnings.warn(f"--exclude-ct {rec['name']}: no training scan was made from it (nothing left out)",
                          stacklevel=2)
    if not kept:
        raise InputError("--exclude-ct: every training scan was made from a held-out CT; nothing left to train on")
    return Population(kept, sorted(cts.values(), key=lambda c: c["name"]), list(held.values()))


def training_population(scans: Sequence[str | os.PathLike], exclude_ct: Sequence[str | os.PathLike]) -> Population:
    """The --scans items resolved to files, less those made from the --exclude-ct volumes."""
    return hold_out(resolve_scan_paths(scans), exclude_ct)


@dataclass
class Shard:
    """This rank's scans, and what every rank knows about the whole list."""

    local: list[tuple[int, Path, Scan]]
    """(index in the --scans list, absolute path, scan) of each scan this rank owns."""
    skipped: list[tuple[int, str]]
    """(index, message) of every unusable scan, on any rank, by index."""
    names: list[str]
    """Absolute paths of the scans in use (all ranks), in list order."""


def read_training_scan(path: Path, data: str) -> Scan:
    """One training scan, checked for what ``data`` ('projections' or 'voxels') trains on."""
    scan = read_scan(path)
    scan.require_recon_grid(path)
    if data == "voxels" and scan.gt is None:
        raise InputError(f"{path}: --data voxels needs a ground truth in every scan, this one has none "
                         f"(use --data projections)")
    scan.clean = None  # not used: keep only what training reads
    return scan


def load_shard(d: Dist, paths: list[Path], data: str, skip_bad: bool) -> Shard:
    """Read this rank's scans (collective: every rank learns about every unreadable one)."""
    local, bad = [], []
    for i in range(d.rank, len(paths), d.world_size):
        try:
            local.append((i, Path(os.path.abspath(paths[i])), read_training_scan(paths[i], data)))
        except InputError as exc:
            bad.append((i, str(exc)))
    bad = sorted(b for part in d.all_gather_object(bad) for b in part)
    if bad and not skip_bad:
        more = f" ({len(bad)} unusable scans in all)" if len(bad) > 1 else ""
        raise InputError(f"{bad[0][1]}{more}; --skip-bad leaves out the scans that cannot be used")
    if bad and d.is_main:
        for _, message in bad:
            warnings.warn(f"skipping {message}", stacklevel=3)
    counts = d.all_gather_object(len(local))
    if min(counts) == 0:
        raise InputError(f"--scans: {sum(counts)} readable scans cannot feed {d.world_size} processes "
                         f"(rank {counts.index(0)} has none); start fewer processes")
    skipped = {j for j, _ in bad}
    names = [os.path.abspath(p) for i, p in enumerate(paths) if i not in skipped]
    return Shard(local, bad, names)


def attenuation_range(d: Dist, local: list[tuple[int, Path, Scan]], data: str, mu_max: float) -> tuple[float, float]:
    """(mu_max, mean mu) in 1/mm over all ranks' scans: ``mu_max`` if > 0, else the largest
    per-scan range; the mean of the per-scan mean attenuations (collective)."""
    if mu_max > 0:
        top = mu_max
    elif data == "voxels":
        top = max(volume_mu_max(scan.gt) for _, _, scan in local)
    else:
        top = max(estimate_mu_max(scan) for _, _, scan in local)
    stats = torch.tensor([sum(mean_attenuation(scan) for _, _, scan in local), len(local)],
                         dtype=torch.float64, device=d.comm_device)
    peak = torch.tensor([top], dtype=torch.float64, device=d.comm_device)
    d.all_reduce(stats)
    d.all_reduce(peak, op="max")
    if not math.isfinite(float(peak)) or float(peak) <= 0:
        raise InputError("cannot estimate the attenuation range of the scans; pass --mu-max")
    return float(peak), float(stats[0] / stats[1])
