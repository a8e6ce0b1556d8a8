"""Preemption signals: SIGTERM/SIGUSR1 (a scheduler's notice, Slurm's warning) become a flag that
the training loop reads at its next step, so the step finishes and a checkpoint is written."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)


class StopRequested:
    """Turns the stop signals into a flag while the ``with`` block runs; restores the handlers after."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in STOP_SIGNALS:
            # Outside the main thread signal() raises ValueError: leave signals alone there.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal_name = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.signal_name is not None


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """For DataLoader workers: the stop signals go to the whole process group, and the main process
    finishes its step and checkpoints; a worker dying first would be a DataLoader error, not a stop."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
