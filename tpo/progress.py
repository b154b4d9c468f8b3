"""Progress that reads in a terminal and in a log file.

In a terminal: tqdm bars (Lightning's ``TQDMProgressBar``). Elsewhere (CI logs, ``nohup``, a
redirected ``> run.log``) a bar redrawn with carriage returns is one unreadable line, or nothing
until the end, so there :class:`LineProgress` and :class:`LineProgressBar` print one line every
few percent instead::

    fit: step 262/1311 (20%), loss 0.84, 1m40s elapsed, about 6m40s left
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

__all__ = ["LineProgress", "LineProgressBar", "is_terminal", "progress", "progress_bar_callback"]


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``, where bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class LineProgress:
    """A tqdm-like counter (``update``, ``close``, a context manager) that prints a line each time
    another ``every`` percent of ``total`` is done, and one at the end.

    Args:
        total: the count at 100 %.
        desc: what is counted, the start of every line.
        every: percent between lines.
        unit: the noun after the counts (``"step"``, ``"it"``...).
        stream: where lines go (default ``sys.stderr``).
        disable: print nothing.
    """

    def __init__(self, total: int, desc: str, *, every: float = 5.0, unit: str = "it",
                 stream: TextIO | None = None, disable: bool = False) -> None:
        if every <= 0:
            raise ValueError(f"every: expected a positive percentage, got {every}")
        self.total, self.desc, self.every, self.unit = int(total), desc, every, unit
        self.stream, self.disable = stream, disable
        self.n = 0
        self._start = time.monotonic()
        self._next = every
        self._closed = False
        self._postfix: dict[str, Any] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more; ``postfix`` values (e.g. ``loss=0.84``) go on the lines printed from now."""
        self.n += n
        self._postfix = postfix or self._postfix
        percent = 100.0 * self.n / max(self.total, 1)
        if percent >= self._next and self.n < self.total:
            self._print(percent, self._postfix)
            while self._next <= percent:
                self._next += self.every

    def close(self, **postfix: Any) -> None:
        """Print the last line (once), with ``postfix`` or the last update's."""
        if not self._closed:
            self._closed = True
            self._print(100.0 * self.n / max(self.total, 1), postfix or self._postfix)

    def _print(self, percent: float, postfix: dict) -> None:
        if self.disable:
            return
        elapsed = time.monotonic() - self._start
        parts = [f"{self.desc}: {self.unit} {self.n}/{self.total} ({percent:.0f}%)"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items()]
        parts.append(f"{_duration(elapsed)} elapsed")
        if 0 < self.n < self.total:
            parts.append(f"about {_duration(elapsed * (self.total - self.n) / self.n)} left")
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)


def progress(total: int, desc: str, *, disable: bool = False, every: float = 5.0, unit: str = "it"):
    """A tqdm bar in a terminal, a :class:`LineProgress` elsewhere (both take ``update(n)`` and
    ``close()``)."""
    if is_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=disable, leave=False, unit=unit)
    return LineProgress(total, desc, every=every, unit=unit, disable=disable)


class LineProgressBar(ProgressBar):
    """Lightning's progress as lines: training every ``every`` percent of the run's steps (the
    fraction of ``max_time`` when that ends the run first), validation, testing and prediction
    every ``every`` percent of their batches; the logged ``loss`` and metrics on each line.

    Args:
        every: percent between lines.
        stream: where lines go (default ``sys.stderr``).
    """

    def __init__(self, *, every: float = 5.0, stream: TextIO | None = None) -> None:
        super().__init__()
        self.every, self.stream = every, stream
        self._enabled = True
        self._train: LineProgress | None = None
        self._eval: LineProgress | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, total: float, desc: str, unit: str) -> LineProgress:
        total = int(total) if total not in (None, float("inf")) else 0
        return LineProgress(total, desc, every=self.every, unit=unit, stream=self.stream,
                            disable=not self._enabled or not self.trainer.is_global_zero)

    def _timer(self):
        from lightning.pytorch.callbacks import Timer

        return next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)

    def on_train_start(self, trainer, pl_module) -> None:
        steps = trainer.estimated_stepping_batches
        if steps not in (None, float("inf")):
            self._train = self._line(steps, "fit", "step")
            self._train.n = trainer.global_step
        elif self._timer() is not None:  # a run bounded by max_time only: count its seconds
            timer = self._timer()
            self._train = self._line(timer.time_elapsed() + timer.time_remaining(), "fit", "second")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train is None:
            return
        metrics = {k: float(v) for k, v in self.get_metrics(trainer, pl_module).items()
                   if isinstance(v, (int, float)) and k != "v_num"}
        timer = self._timer() if self._train.unit == "second" else None
        if timer is not None:
            metrics["step"] = trainer.global_step
        done = int(timer.time_elapsed()) if timer is not None else trainer.global_step
        self._train.update(done - self._train.n, **metrics)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._train is not None:
            self._train.close()
            self._train = None

    def _eval_start(self, total: float, desc: str) -> None:
        if not self.trainer.sanity_checking:
            self._eval = self._line(total, desc, "batch")

    def _eval_batch(self) -> None:
        if self._eval is not None:
            self._eval.update(1)

    def _eval_end(self) -> None:
        if self._eval is not None:
            self._eval.close()
            self._eval = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start(sum(trainer.num_val_batches), "validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start(sum(trainer.num_test_batches), "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval_start(sum(trainer.num_predict_batches), "predict")

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._eval_batch()

    on_test_batch_end = on_predict_batch_end = on_validation_batch_end

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eval_end()

    on_test_end = on_predict_end = on_validation_end


def progress_bar_callback() -> ProgressBar:
    """Lightning's tqdm bar in a terminal, a :class:`LineProgressBar` elsewhere."""
    return TQDMProgressBar() if is_terminal() else LineProgressBar()
