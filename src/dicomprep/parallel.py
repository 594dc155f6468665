"""The one process pool: a function over many files, in chunks, in input order.

Used where one job reads thousands of headers (the index's parse, the all-tags
crawl). Workers are forked (``fork`` start method), so they share the parent's
imported modules and start fast; each task is a chunk of items, so the pool's
messaging cost is paid per chunk, not per file.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _run_chunk(task: tuple[Callable, Sequence]) -> list:
    """One pool task: ``fn`` over one chunk (module level, so it pickles)."""
    fn, chunk = task
    return [fn(item) for item in chunk]


def chunk_size(n_items: int, workers: int, smallest: int, largest: int) -> int:
    """About eight chunks per worker, between ``smallest`` and ``largest`` items."""
    return max(smallest, min(largest, n_items // (workers * 8) or smallest))


def map_chunked(fn: Callable[[T], R], items: Sequence[T], workers: int, *, serial_below: int,
                chunk: tuple[int, int]) -> list[R]:
    """``[fn(item) for item in items]``, in order, on ``workers`` forked processes.

    Runs in this process when ``workers <= 1`` or there are fewer than
    ``serial_below`` items (a pool would cost more than it saves). ``chunk`` is
    the (smallest, largest) chunk size, see :func:`chunk_size`. ``fn`` must be a
    module-level function (it is pickled by reference).
    """
    if workers <= 1 or len(items) < serial_below:
        return [fn(item) for item in items]
    size = chunk_size(len(items), workers, *chunk)
    tasks = [(fn, items[i:i + size]) for i in range(0, len(items), size)]
    out: list[R] = []
    with mp.get_context("fork").Pool(workers) as pool:
        for part in pool.imap(_run_chunk, tasks):
            out.extend(part)
    return out
