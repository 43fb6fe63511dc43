"""The README's results table: run ``nfrecon bench`` (optional), then print its table.

    python scripts/bench_table.py runs/bench                      # table of a finished bench
    python scripts/bench_table.py runs/bench -- --size 64 --views 50 400 --noise noisy clean

With arguments after ``--`` the bench runs first (``nfrecon bench --out DIR <arguments>``).
The results.md of DIR is then re-rendered from its results.json (so it follows the current
table layout) and its "Measured here vs published" section is printed for the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nfrecon.bench.table import render_markdown
from nfrecon.cli import main as nfrecon_main
from nfrecon.fsutil import atomic_write_text

SECTION = "## Measured here vs published"


def main(argv: list[str]) -> int:
    own, bench_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="bench folder (holds results.json)")
    args = parser.parse_args(own)
    if bench_args is not None:
        code = nfrecon_main(["bench", "--out", str(args.out), *bench_args])
        if code not in (0, 1):  # 1: some runs failed, the table still shows the rest
            return code
    results = args.out / "results.json"
    if not results.is_file():
        sys.stderr.write(f"error: {results}: no such file (run the bench first)\n")
        return 2
    text = render_markdown(json.loads(results.read_text()))
    atomic_write_text(args.out / "results.md", text)
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    print(text[start : end if end >= 0 else None].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
