"""``nfrecon bench``: the results table of every method on simulated scans of CT volumes."""

from __future__ import annotations

import shlex

from nfrecon.bench.config import BenchConfig
from nfrecon.bench.runner import plan, run_bench
from nfrecon.cli.common import parse
from nfrecon.cli.fit import base_config
from nfrecon.errors import InputError
from nfrecon.fit.config import FitConfig

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


def fit_configs(cfg: BenchConfig) -> dict[str, FitConfig]:
    """The preset-resolved FitConfig of each neural method (condcbnt only with a backbone)."""
    configs = {}
    try:
        configs["naf"] = base_config(cfg.naf_preset, None, cfg.device, "naf")
    except InputError as exc:
        raise InputError(f"--naf-preset: {exc}") from exc
    if cfg.backbone is not None:
        try:
            configs["condcbnt"] = base_config(cfg.condcbnt_preset, None, cfg.device, "condcbnt", cfg.backbone)
        except InputError as exc:
            raise InputError(f"--condcbnt-preset/--backbone: {exc}") from exc
    return configs


def main(argv: list[str], prog: str) -> int:
    cfg = parse(BenchConfig, argv, prog, DESCRIPTION)
    bench = plan(cfg, fit_configs(cfg), command=shlex.join([*prog.split(), *argv]))
    doc = run_bench(bench)
    failed = [r for r in doc["results"] if r["status"] != "ok"]
    print(f"results in {cfg.out}/: results.md, results.csv, results.json, curves.png, slices.png")
    if failed:
        print(f"{len(failed)} of {len(doc['results'])} runs failed (see results.md)")
        return 1
    return 0
