"""WallClockCosine: the learning rate follows the clock, not the step count."""

from __future__ import annotations

import math

import pytest
import torch

from tpo.schedules import WallClockCosine, warmup_cosine


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _optimizer(lr: float = 0.5) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_rate_follows_the_clock_whatever_the_steps():
    clock = FakeClock()
    optimizer = _optimizer()
    schedule = WallClockCosine(optimizer, seconds=100.0, warmup_ratio=0.1, clock=clock)
    assert optimizer.param_groups[0]["lr"] == 0.0
    seen = []
    for now, steps in ((5.0, 3), (10.0, 1), (55.0, 40), (100.0, 2), (250.0, 1)):
        clock.now = 100.0 + now
        for _ in range(steps):
            schedule.step()
        seen.append(optimizer.param_groups[0]["lr"])
    expected = [0.5 * 0.5, 0.5, 0.5 * 0.5 * (1 + math.cos(math.pi * 45 / 90)), 0.0, 0.0]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_hand_values():
    assert warmup_cosine(0.0, 0.2) == 0.0
    assert warmup_cosine(0.1, 0.2) == pytest.approx(0.5)
    assert warmup_cosine(0.6, 0.2) == pytest.approx(0.5)
    assert warmup_cosine(1.5, 0.2) == 0.0
    assert warmup_cosine(-1.0, 0.0) == 1.0


def test_state_dict_leaves_the_clock_out_and_resumes_afresh():
    clock = FakeClock()
    schedule = WallClockCosine(_optimizer(), seconds=10.0, clock=clock)
    clock.now += 9.0
    schedule.step()
    state = schedule.state_dict()
    assert "start" not in state and "clock" not in state
    fresh_clock = FakeClock()
    fresh_clock.now = 7.0
    resumed = WallClockCosine(_optimizer(), seconds=10.0, clock=fresh_clock)
    resumed.load_state_dict(state)
    assert resumed.elapsed() == 0.0 and resumed.last_epoch == schedule.last_epoch


@pytest.mark.parametrize("kwargs, match", [({"seconds": 0.0}, "seconds"),
                                           ({"seconds": 5.0, "warmup_ratio": 1.0}, "warmup_ratio")])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WallClockCosine(_optimizer(), **kwargs)


def test_module_refuses_two_schedule_lengths():
    from tpo.module import TPOModule

    with pytest.raises(ValueError, match="schedule_steps, schedule_seconds"):
        TPOModule(backbone={"name": "tiny_llava"}, schedule_steps=5, schedule_seconds=5.0)
