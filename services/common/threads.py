"""Per-process CPU thread budget: each service process uses its share of the cores, never all of them."""

from __future__ import annotations

import os


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share(processes: int) -> int:
    """Threads for one of ``processes`` compute processes sharing this machine."""
    return max(1, cpu_count() // max(1, processes))


def apply(threads: int) -> None:
    """Set torch intra-op and interop threads and the OpenMP/MKL variables for children."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    global _configured
    _configured = threads
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(max(1, threads))
    except RuntimeError:  # already set once in this process
        pass


def run_pinned(fn, *args):
    """Run ``fn`` with this process's torch thread count applied in the calling (worker) thread too.

    OpenMP keeps the thread count per OS thread; an executor thread would otherwise start with the default.
    """
    import torch

    n = _configured or torch.get_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return fn(*args)


_configured = 0


class ComputeThread:
    """One long-lived worker thread for a role's model calls (generate, log-probabilities): the same OS thread every
    time, so its torch thread setting, allocator and kernel caches stay warm, and no pool picks a cold thread.
    Calls queue in order (the model serves one request at a time anyway)."""

    def __init__(self, name: str):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn, *args):
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(self.pool, run_pinned, fn, *args)

    def call(self, fn, *args):
        """The same, from a thread that may block (a local-socket connection): the model runs on the compute
        thread whichever road a call came by (run inline on the connection's thread instead, a batch-64 generate
        measured ~0.5-1 ms slower here, the model hopping between threads)."""
        return self.pool.submit(run_pinned, fn, *args).result()
