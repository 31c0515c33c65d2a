"""The reliability suite's machinery (issue #9): fuzzing strategies, the hostile model-file corpus and
crash-resume chaos runs. Used by ``tests/test_reliability_*.py`` (fast profile) and
``benchmarks/reliability.py`` (long profile, the figures of ``docs/RELIABILITY.md``)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def time_limit(seconds: float | None, make_error: Callable[[str], BaseException] = TimeoutError) -> Iterator[None]:
    """Raise ``make_error(message)`` in the main thread once the block has run ``seconds`` (a no-op without
    a limit, in other threads, or where ``signal.setitimer`` is missing)."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise make_error(f"ran past its {seconds:g} s time limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
