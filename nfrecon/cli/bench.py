"""``nfrecon bench``: the results table of every method on simulated scans of CT volumes."""

from __future__ import annotations

import shlex

from nfrecon.bench.config import BenchConfig
from nfrecon.bench.runner import FitSetup, plan, run_bench
from nfrecon.cli.common import parse
from nfrecon.errors import InputError
from nfrecon.fit import presets

DESCRIPTION = """Benchmark every method on the same simulated scans. For each CT volume (default: the
real CTs in ../shared/data) the protocol's scan is simulated (default: the CondCBNT-like
protocol, 400 views over 205 deg; --size N scales it to N^3 with the same field of view),
each condition (--views x --noise; 50 views = every 8th of 400) is reconstructed by each
method (fdk; iterative = TV with its tuned defaults; naf with --naf-preset; condcbnt with
--backbone), each in a fresh process, and <out> receives results.md (mean +- std per
method x views x noise, seconds per volume, peak memory, with the published CondCBNT-paper
numbers beside them), results.csv and results.json (per volume, machine, commit, command),
curves.png (PSNR over wall time) and slices.png (one slice of every method).
A full-size run takes hours on a CPU: try --size 64 --views 50 --noise noisy first."""


def fit_setups(cfg: BenchConfig) -> dict[str, FitSetup]:
    """The preset-resolved configuration of each neural method (condcbnt only with a backbone)."""
    setups = {}
    for method, preset, option in (("naf", cfg.naf_preset, "--naf-preset"),
                                   ("condcbnt", cfg.condcbnt_preset, "--condcbnt-preset/--backbone")):
        if method == "condcbnt" and cfg.backbone is None:
            continue
        try:
            layered = presets.fit_config(preset, None, cfg.device, method,
                                         cfg.backbone if method == "condcbnt" else None)
        except InputError as exc:
            raise InputError(f"{option}: {exc}") from exc
        setups[method] = FitSetup(layered.preset_name, layered.config)
    return setups


def main(argv: list[str], prog: str) -> int:
    cfg = parse(BenchConfig, argv, prog, DESCRIPTION)
    bench = plan(cfg, fit_setups(cfg), command=shlex.join([*prog.split(), *argv]))
    doc = run_bench(bench)
    failed = [r for r in doc["results"] if r["status"] != "ok"]
    print(f"results in {cfg.out}/: results.md, results.csv, results.json, curves.png, slices.png")
    if failed:
        print(f"{len(failed)} of {len(doc['results'])} runs failed (see results.md)")
        return 1
    return 0
