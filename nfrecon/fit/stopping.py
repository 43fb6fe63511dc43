"""Held-out views and automatic stopping on their projection error."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def split_views(n_views: int, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) view indices; holdout views are evenly spread over the scan.

    ``round(n_views * holdout_fraction)`` views (at least 1 when the fraction is positive)
    are held out, never the first or last view; fraction 0 holds out none.
    """
    if holdout_fraction <= 0:
        return np.arange(n_views), np.arange(0)
    k = max(1, round(n_views * float(holdout_fraction)))
    if n_views - k < 1:
        raise ValueError(f"cannot hold out {k} of {n_views} views")
    hold = np.unique(np.round(np.linspace(0, n_views - 1, k + 2)[1:-1]).astype(int))
    train = np.setdiff1d(np.arange(n_views), hold)
    return train, hold


@dataclass
class EarlyStopper:
    """Stop when the held-out error has not improved by ``min_improvement`` (relative to
    the last significant improvement) for ``patience`` consecutive evaluations.

    ``best``/``best_step`` track the lowest error seen (the state worth keeping).
    """

    patience: int
    min_improvement: float
    best: float = float("inf")
    best_step: int = -1
    reference: float = float("inf")
    bad_evals: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, error: float) -> bool:
        """Record ``error`` at ``step``; True if it is the lowest so far."""
        error = float(error)
        self.history.append((step, error))
        if error < self.reference * (1 - self.min_improvement):
            self.reference, self.bad_evals = error, 0
        else:
            self.bad_evals += 1
        if error < self.best:
            self.best, self.best_step = error, step
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        keys = ("best", "best_step", "reference", "bad_evals")
        return {k: getattr(self, k) for k in keys} | {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = float(state["best"]), int(state["best_step"])
        self.reference, self.bad_evals = float(state["reference"]), int(state["bad_evals"])
        self.history = [(int(s), float(e)) for s, e in state["history"]]
