"""The results table: every method on the same simulated scans, the same grid and the same metrics.

``nfrecon bench`` (:func:`nfrecon.bench.runner.run_bench`) simulates one scan per CT
volume and condition (views x noisy/clean) on a protocol, runs each method on it in a
fresh worker process (:mod:`nfrecon.bench.worker`, so that its peak memory is its own),
and writes results.md / .csv / .json (:mod:`nfrecon.bench.table`) and curves.png /
slices.png (:mod:`nfrecon.bench.figures`). Published numbers live in
:mod:`nfrecon.bench.published`; the iterative baseline's settings in
:mod:`nfrecon.bench.iterative`.
"""
