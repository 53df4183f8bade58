"""The learning-rate schedule against the reference's formula (DESIGN §2, training: "warmup from
1e-7 then cosine warm restarts (×lr_shrink each period)"). The reference used torchenhanced's
CosineWarmup: warmup lr_init → lr over warmup_steps, then period n of oscil_steps is
lr_shrink**n · (lr_min + (lr − lr_min)·(1 + cos(π·phase/oscil_steps))/2): the whole period,
its floor included, is scaled."""

import math
from types import SimpleNamespace

import pytest

from arrows.schedule import lr_at


def reference_formula(t, *, lr, warmup_steps, oscil_steps, lr_shrink, lr_init, lr_min):
    # Written from the reference's definition, independently of arrows.schedule.
    if t <= warmup_steps:
        return lr_init + (lr - lr_init) * t / warmup_steps
    n, phase = divmod(t - warmup_steps, oscil_steps)
    return lr_shrink**n * (lr_min + (lr - lr_min) * (1 + math.cos(math.pi * phase / oscil_steps)) / 2)


@pytest.mark.parametrize("warmup, oscil", [(4000, 200_000), (4000, 300_000), (10, 50), (3, 4)])
def test_cosine_warm_restarts_match_the_reference_point_by_point(warmup, oscil):
    o = dict(lr=1e-4, warmup_steps=warmup, oscil_steps=oscil, lr_shrink=0.85, lr_init=1e-7, lr_min=1e-6)
    steps = set(range(0, warmup + 5))
    for k in range(4):  # around each restart, mid-period and at each period's bottom
        base = warmup + k * oscil
        steps |= {base - 1, base, base + 1, base + oscil // 2, base + oscil - 1}
    for t in sorted(s for s in steps if s >= 0):
        got = lr_at(t, SimpleNamespace(**o), 10**9, None)
        assert got == pytest.approx(reference_formula(t, **o), rel=1e-12, abs=0), t


def test_the_floor_shrinks_with_the_peak():
    o = SimpleNamespace(lr=1e-4, warmup_steps=0, oscil_steps=100, lr_shrink=0.5, lr_init=1e-7, lr_min=1e-5)
    assert lr_at(100, o, 10**9, None) == pytest.approx(0.5e-4)  # second period's peak
    assert lr_at(199, o, 10**9, None) == pytest.approx(0.5e-5, rel=1e-2)  # and its floor: lr_min·0.5, not lr_min
