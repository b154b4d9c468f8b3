"""Learning-rate schedules that follow the wall clock, for runs limited by a time budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WallClockCosine", "warmup_cosine"]


def warmup_cosine(progress: float, warmup_ratio: float) -> float:
    """The learning-rate factor at ``progress`` (fraction of the schedule done, clamped to
    [0, 1]): linear from 0 to 1 over the first ``warmup_ratio``, then half a cosine to 0."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_ratio:
        return progress / warmup_ratio
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup_ratio) / max(1 - warmup_ratio, 1e-12)))


class WallClockCosine(LambdaLR):
    """Linear warmup then cosine decay over ``seconds`` of wall clock since construction.

    A time-budgeted run (Lightning's ``max_time``) takes as many steps as the machine allows; a
    schedule in steps then either ends early (and, for Hugging Face's cosine, climbs again) or is
    cut off before it decays. This one reads the clock at every ``step()``: at the budget's end
    the rate is 0 on any machine. After ``seconds`` it stays 0.

    Args:
        optimizer: the optimizer whose groups' initial rates are scaled.
        seconds: the schedule's length, > 0.
        warmup_ratio: fraction of ``seconds`` in linear warmup, in [0, 1).
        clock: seconds since an arbitrary origin (default :func:`time.monotonic`).
    """

    def __init__(self, optimizer: Optimizer, *, seconds: float, warmup_ratio: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds: expected > 0, got {seconds}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio: expected in [0, 1), got {warmup_ratio}")
        self.seconds, self.warmup_ratio, self.clock = seconds, warmup_ratio, clock
        self.start = clock()
        super().__init__(optimizer, lambda _step: warmup_cosine(self.elapsed() / seconds, warmup_ratio))

    def state_dict(self) -> dict:
        """LambdaLR's state without the clock and its origin (a resumed run starts afresh)."""
        return {k: v for k, v in super().state_dict().items() if k not in ("clock", "start")}

    def elapsed(self) -> float:
        """Seconds since construction."""
        return self.clock() - self.start
