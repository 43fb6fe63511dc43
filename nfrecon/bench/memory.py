"""Peak memory of a method: the process's peak resident set (CPU) and torch's peak allocation (CUDA).

tracemalloc does not see torch's allocations, so the CPU number is the kernel's
``ru_maxrss`` (peak resident set size of this process). It is only the method's own
when the method runs in a fresh process (the bench's default); ``baseline_rss_mb`` is
the peak before the method started (Python, torch, the scan), so
``peak_rss_mb - baseline_rss_mb`` is what the method added on top of that (a lower
bound when the baseline had a transient peak of its own).
"""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class MemoryProbe:
    """Measure around a method: ``probe = MemoryProbe(device)``, run it, ``probe.result()``."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.baseline = peak_rss_mb()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def result(self) -> dict:
        """{"peak_rss_mb", "baseline_rss_mb", "cuda_peak_mb" (None on the CPU)} in MiB."""
        cuda = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            cuda = torch.cuda.max_memory_allocated(self.device) / 2**20
        return {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": self.baseline, "cuda_peak_mb": cuda}
