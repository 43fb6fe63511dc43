"""A bench job in a fresh process: ``python -m nfrecon.bench.worker JOB.json RECORD.json``.

Reads the job (see :mod:`nfrecon.bench.methods`), runs it and writes its record as JSON,
atomically. A failure leaves no record and exits non-zero with the error on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nfrecon.bench.methods import run_job
from nfrecon.fsutil import atomic_write_text


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m nfrecon.bench.worker JOB.json RECORD.json\n")
        return 2
    job = json.loads(Path(argv[0]).read_text())
    record = run_job(job)
    atomic_write_text(argv[1], json.dumps(record, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
