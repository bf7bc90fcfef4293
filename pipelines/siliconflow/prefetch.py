"""Work in threads: a generator's items produced ahead by a thread of their own, and pools of
threads that a stop signal lets end."""

import queue
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from pipelines.errors import STOPS

_END = object()
T = TypeVar("T")


def prefetched(items: Generator[T, None, None], depth: int) -> Iterator[T]:
    """`items`, produced by a thread of their own up to `depth` ahead of the caller.

    An error in the thread is raised here; a caller that stops early stops the thread too.
    dlt's `parallelized` resources do not do this: they run one `next()` of a generator at a
    time, so the pages of a chunk would still download and convert one after the other.
    """
    buffer: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def offer(entry: tuple[Any, BaseException | None]) -> bool:
        while not stopped.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as error:  # every error belongs to the caller
            offer((_END, error))
        finally:
            items.close()

    threading.Thread(target=produce, name="sfbatches-prefetch", daemon=True).start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stopped.set()


@contextmanager
def worker_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of `workers` threads; leaving the block waits for them, and a stop signal meanwhile
    waits too: raised inside `Thread.join`, it can leave Python 3.11 waiting at exit for a thread
    that has ended (python/cpython#90882). Tasks not yet started are dropped."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool
    finally:
        with STOPS.held():
            pool.shutdown(wait=True, cancel_futures=True)
