"""Learning-rate schedules, as functions of the optimizer step (so resuming needs no state).

- `reference`: linear warmup from `lr_init` to `lr` over `warmup_steps`, then cosine warm restarts:
  each period of `oscil_steps` decays from `lr` to `lr_min`, and period n (from 0) is that whole
  curve times `lr_shrink**n`, its floor included (the reference code's schedule: torchenhanced's
  `CosineWarmup`, lr = lr_shrink**n * (lr_min + (lr - lr_min) * (1 + cos(pi * phase / oscil_steps)) / 2)).
- `cooldown`: the same warmup, then constant `lr`, then a linear decay to 0 over the last
  `cooldown_finish` fraction of the run (the reference's later schedule).
"""

from __future__ import annotations

import math


def reference_lr(step: int, *, lr: float, warmup_steps: int, lr_init: float, lr_min: float, oscil_steps: int, lr_shrink: float) -> float:
    if step < warmup_steps:
        return lr_init + (lr - lr_init) * step / warmup_steps
    t = step - warmup_steps
    period, phase = divmod(t, max(oscil_steps, 1))
    return lr_shrink**period * (lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * phase / max(oscil_steps, 1))))


def cooldown_lr(step: int, *, lr: float, warmup_steps: int, lr_init: float, total_steps: int, cooldown_finish: float) -> float:
    if step < warmup_steps:
        return lr_init + (lr - lr_init) * step / warmup_steps
    cooldown_start = total_steps * (1.0 - cooldown_finish)
    if step < cooldown_start:
        return lr
    remaining = max(total_steps - cooldown_start, 1e-12)
    return lr * max(0.0, (total_steps - step) / remaining)


def lr_at(step: int, optim, total_steps: int, cooldown_finish: float | None) -> float:
    """The learning rate of optimizer step `step` (0-based) for the config's optim section."""
    if cooldown_finish is not None:
        return cooldown_lr(step, lr=optim.lr, warmup_steps=optim.warmup_steps, lr_init=optim.lr_init, total_steps=total_steps, cooldown_finish=cooldown_finish)
    oscil = optim.oscil_steps if optim.oscil_steps is not None else max(total_steps - optim.warmup_steps, 1)
    return reference_lr(
        step, lr=optim.lr, warmup_steps=optim.warmup_steps, lr_init=optim.lr_init, lr_min=optim.lr_min, oscil_steps=oscil, lr_shrink=optim.lr_shrink
    )
