"""Learning-rate schedules as pure functions of the step.

Pure functions (not torch schedulers) so that a resumed run recomputes the exact
rate from the restored step counter, with no scheduler state to checkpoint.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base: float, final: float = 0.0) -> float:
    """Linear warm-up from ~0 to ``base`` then cosine decay to ``final``."""
    if total_steps <= 0:
        return base
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant_cooldown(step: int, total_steps: int, warmup_steps: int, base: float, cooldown_fraction: float = 0.2) -> float:
    """The "infinite" schedule for continual pretraining: warm-up, a constant
    plateau that can be extended at will, then a linear cool-down to 0 over the
    last ``cooldown_fraction`` of steps."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    cooldown_start = int(total_steps * (1.0 - cooldown_fraction))
    if step < cooldown_start:
        return base
    return base * max(0.0, (total_steps - step) / max(1, total_steps - cooldown_start))


SCHEDULES = {"warmup_cosine": warmup_cosine, "constant_cooldown": constant_cooldown}
