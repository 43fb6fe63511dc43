"""What happens at which step of a training loop: the learning-rate schedule and the
every-N-steps events (evaluations, previews, log rows, checkpoints).

Steps count completed optimisation steps: step 0 is before the first update, step
``steps`` after the last.
"""

from __future__ import annotations

import math


def lr_factor(steps: int, schedule: str, final_ratio: float):
    """The learning-rate multiplier at each step: 1 at step 0, ``final_ratio`` at ``steps``
    (``schedule`` 'exp' or 'cosine'; 'constant' is always 1)."""
    steps = max(steps, 1)

    def factor(step: int) -> float:
        frac = min(step / steps, 1.0)
        if schedule == "exp":
            return final_ratio**frac
        if schedule == "cosine":
            return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0

    return factor


def due(step: int, every: int) -> bool:
    """Whether an event that happens every ``every`` steps (0: never) happens at ``step``."""
    return every > 0 and step % every == 0
