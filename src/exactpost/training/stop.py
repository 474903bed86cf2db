"""Stop a long loop cleanly on SIGTERM or SIGINT: finish the current step, save, then exit.

``kill PID`` (SIGTERM: what ``kill``, ``timeout``, SLURM pre-emption and container runtimes
send) or Ctrl-C (SIGINT) during training used to cut the run wherever it was; the atomic
checkpoints made that safe, but the steps since the last checkpoint were lost. Inside
:class:`StopRequests` the first such signal only records a request; the loop polls
:attr:`StopRequests.requested` after each step, saves its state and raises
:class:`TrainingStopped`. A second signal interrupts at once (``KeyboardInterrupt``).

SIGINT is left alone when the process ignores it: a shell without job control starts
background jobs (``cmd &``) with SIGINT ignored, so such a job never sees Ctrl-C or
``kill -INT`` -- send it SIGTERM instead. Handlers are installed only from the main thread
(Python's rule) and the previous ones are restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional


class TrainingStopped(KeyboardInterrupt):
    """The loop stopped on request after saving its state; ``str(exc)`` says where and how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by signal ``signum``: 128 + signum."""
        return 128 + self.signum


class StopRequests:
    """Context manager: while active, SIGTERM/SIGINT set :attr:`signum` instead of killing::

        with StopRequests() as stop:
            while work_left():
                do_one_step()
                if stop.requested:
                    save()
                    raise TrainingStopped(f"stopped by {stop.name}", stop.signum)
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if sig == signal.SIGINT and previous == signal.SIG_IGN:
                continue  # a background job of a non-interactive shell: keep ignoring Ctrl-C
            self._previous[sig] = previous
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
