"""A time limit for pure-Python work running in a worker thread (where ``signal.alarm`` cannot be used): a timer
raises ``TimeoutError`` inside the thread at its next bytecode (``PyThreadState_SetAsyncExc``). Code blocked in C
for longer is not interrupted; the reward rules that use this (math parsing in sympy) are pure Python."""

from __future__ import annotations

import ctypes
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


class _Deadline:
    def __init__(self, seconds: float):
        self.thread_id = threading.get_ident()
        self.lock = threading.Lock()
        self.active = True
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        with self.lock:
            if self.active:
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id),
                                                           ctypes.py_object(TimeoutError))

    def disarm(self) -> None:
        with self.lock:
            self.active = False
        self.timer.cancel()


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``, or ``TimeoutError`` once ``seconds`` have passed."""
    deadline = _Deadline(seconds)
    deadline.timer.start()
    try:
        return fn()
    finally:
        deadline.disarm()
        if deadline.fired:  # it may have fired just as fn returned: let a still-pending exception land here
            try:
                for _ in range(1000):
                    pass
            except TimeoutError:
                pass
