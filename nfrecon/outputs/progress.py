"""Progress bars and human-readable durations."""

from __future__ import annotations

import math
import sys

from tqdm import tqdm

from nfrecon.errors import InputError


def progress(total: int | None, desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr showing count, rate and ETA.

    It stays on when stderr is not a terminal (logs of batch jobs) but then redraws at
    most every 30 s instead of every 0.5 s, so log files are not flooded. Extra keyword
    arguments go to tqdm.
    """
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    options = {"mininterval": 0.5 if interactive else 30.0, "dynamic_ncols": interactive}
    options.update(kwargs)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, **options)


def format_duration(seconds: float) -> str:
    """'0.42 s', '12.3 s', '2 min 05 s', '1 h 02 min' for a duration in seconds (>= 0)."""
    s = float(seconds)
    if math.isnan(s) or s < 0:
        raise InputError(f"format_duration: seconds must be >= 0, got {seconds}")
    if math.isinf(s):
        return "inf"
    if s < 9.995:
        return f"{s:.2f} s"
    if s < 59.95:
        return f"{s:.1f} s"
    total = round(s)
    h, rem = divmod(total, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"
