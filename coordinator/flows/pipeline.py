"""Experience ahead of training (asynchronous off-policy RL with a staleness bound).

A flow's ``collect(step)`` (generate, score, reference log-probabilities) runs in a producer task for up to
``k = max_staleness`` steps ahead of the step being trained, so the rollout, reward and reference services work
while the trainer trains. Step ``s`` is collected only once step ``s - 1 - k`` is trained and its weights pushed;
each step pushes at most one version and replicas serve a committed version from their next request, so every
sample of step ``s`` is at most ``k`` versions behind the trainer when step ``s`` is trained.

Nothing waits without an end: the queue holds at most ``k + 1`` steps; the producer waits only for the trainer to
finish a step (or for a resume after a pause), and every RPC it makes has a deadline; the trainer waits only for
the producer, and a producer failure is raised in the trainer's loop at once.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

# The phase timers a ``FlowContext.phase`` adds to: the producer's own per-step dict inside the producer task.
PHASES: ContextVar[dict[str, float] | None] = ContextVar("alignmesh_phases", default=None)


@dataclass
class Collected:
    step: int
    item: Any
    cursor: int  # the prompt sampler's cursor right after this step's prompts were taken
    phases: dict[str, float] = field(default_factory=dict)


async def resumed(control) -> None:
    """Return once the job is running (not paused) or cancelled: waits on whichever event comes first."""
    while not control.running.is_set() and not control.cancel.is_set():
        waits = [asyncio.ensure_future(control.running.wait()), asyncio.ensure_future(control.cancel.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for fut in pending:
            fut.cancel()


class Ahead:
    """The producer of steps ``first..last``, at most ``k`` steps ahead of the last trained one (0 ahead, in
    turn, up to step ``warmup``)."""

    def __init__(self, collect: Callable[[int], Awaitable[Any]], first: int, last: int, k: int, control,
                 cursor: Callable[[], int], warmup: int = 0):
        self.collect, self.first, self.last, self.k, self.warmup = collect, first, last, k, warmup
        self.control, self.cursor = control, cursor
        self.trained = first - 1
        self._advanced = asyncio.Event()
        self._queue: asyncio.Queue[Collected] = asyncio.Queue(maxsize=k + 1)
        self._task = asyncio.create_task(self._produce(), name="experience-producer")

    async def _produce(self) -> None:
        for step in range(self.first, self.last + 1):
            while self.trained < step - 1 - (self.k if step > self.warmup else 0):  # the staleness bound
                self._advanced.clear()
                await self._advanced.wait()
            await resumed(self.control)  # collect nothing new while paused (a cancel ends the producer)
            phases: dict[str, float] = {}
            token = PHASES.set(phases)
            try:
                item = await self.collect(step)
            finally:
                PHASES.reset(token)
            await self._queue.put(Collected(step, item, self.cursor(), phases))

    async def get(self, step: int) -> Collected:
        """Step ``step``'s experience; raises what the producer raised if it failed."""
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            self._task.result()  # the producer's exception
            raise RuntimeError(f"the experience producer ended before step {step}")
        got = getter.result()
        if got.step != step:
            raise RuntimeError(f"the experience producer delivered step {got.step} for step {step}")
        return got

    def done(self, step: int) -> None:
        """Step ``step`` is trained and its weights pushed: the producer may run one step further."""
        self.trained = step
        self._advanced.set()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

