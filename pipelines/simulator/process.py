"""The simulator in a process of its own, for the demo and the bench: its threads then never
compete with the client's for one interpreter lock."""

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

BANNER = re.compile(
    r"simulator: (?P<url>\S+) api key (?P<key>\S+) \((?P<visible>[\d,]+) batches visible"
)
START_TIMEOUT_S = 300.0


@dataclass
class Served:
    """A running `sfbatches simulate`: where it answers, with which key, and how many batches
    it lists now (the others are created later in its simulated time)."""

    process: subprocess.Popen[str]
    base_url: str
    api_key: str
    visible: int


@contextmanager
def served_elsewhere(*args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """`sfbatches simulate --port 0 ARGS` in a child process, answering before this yields."""
    argv = [sys.executable, "-m", "pipelines", "simulate", "--port", "0", *args]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    try:
        banner = BANNER.search(process.stdout.readline() if process.stdout else "")
        if banner is None:
            raise RuntimeError(f"the simulator did not start (exit {process.wait()})")
        visible = int(banner["visible"].replace(",", ""))
        served = Served(process, banner["url"], banner["key"], visible)
        _wait_until_answering(served)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_answering(served: Served) -> None:
    request = urllib.request.Request(
        f"{served.base_url}/batches?limit=1",
        headers={"Authorization": f"Bearer {served.api_key}"},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while served.process.poll() is None:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    raise RuntimeError("the simulator did not answer")
