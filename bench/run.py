"""`make bench`: how fast and how lean `sfbatches` syncs, next to a bare fetch loop and dlt's peer.

One run starts the simulator (`sfbatches simulate`, its own process) with N batches, and for each
latency first warms it up: the bare fetch and a full and an incremental sync into a scratch file,
unmeasured and without added latency, ask it once everything the measured steps will ask, so
that every measured answer comes from the simulator's cache of answers and the ratios show the
client's own cost, not the simulator's rendering. Then it measures, every step in its own process:

1. bare fetch - a plain `requests.Session` loop over `GET /v1/batches?limit=100&after=...`
2. `sfbatches sync --no-models` on a fresh database (full sync)
3. the same command again (incremental sync, nothing new)
4. `sfbatches models`
5. the peer - dlt's generic `rest_api` source, merge on `id`, into its own DuckDB file

Steps 1-3 run `--rounds` times in turn (the result files' baseline and sync too): a step's row
shows its median round, the range of its rounds and their highest peak RSS, and its ratio is the
median of each round's ratio to the same round's reference, so a drift in the machine's speed
between rounds cancels out instead of deciding a target.

Wall seconds and peak RSS come from a small wrapper process (`MEASURE`) that starts the step and
collects it with `os.wait4`: that rusage belongs to the step alone (and whatever it waited for).
The wrapper is needed because on Linux a child's `ru_maxrss` starts at the peak RSS of the
process that spawned it; the wrapper stays small, so its floor (printed) is below any step's.
The benchmark only measures and reports targets met or not; it never fails on time.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# The steps run this file too (`--step`), so it imports nothing heavy of the project at the
# top: `pipelines.siliconflow` imports dlt, whose start-up would count as the bare fetch's own.
from pipelines.vocabulary import TERMINAL_STATUSES

DEFAULT_BATCHES = 100_000
DEFAULT_ROUNDS = 3
MAX_BATCHES = 1_000_000
PAGE_SIZE = 100
SEED = 7
FALLBACK_API_KEY = "sk-sim-test"  # pipelines.simulator.DEFAULT_API_KEY, when run by hand
MB = 1024 * 1024
# The simulator's cache must hold every answer of a run: the listing takes ~630 bytes a batch,
# the incremental sync's re-read pages a little more.
CACHE_BYTES_PER_BATCH = 1024
CACHE_BYTES_FLOOR = 200 * 1024 * 1024
# Result files: RESULT_FILES output files of RESULT_LINES lines of about LINE_BYTES (a chat
# completion's line), in a world of RESULT_WORLD batches whose other files are one line each;
# then one file of about 1 GB.
RESULT_WORLD = 60
RESULT_FILES = 24
RESULT_LINES = 20_000
LINE_BYTES = 1_200
BIG_FILE_LINES = 500_000
BIG_LINE_BYTES = 2_000
FILE_DOWNLOADS = 8  # as many at a time as the sync downloads

# Targets from the performance issue, as (limit, unit) checked against one run's figures.
FULL_RATIO_AT_ZERO = 1.5
FULL_RATIO_WITH_LATENCY = 1.1
RSS_LIMIT_MB = 300.0
INCREMENTAL_LIST_REQUESTS = 3
INCREMENTAL_WALL_S = 3.0
MODELS_WALL_S = 1.0
RESULTS_RATIO = 1.5

# Runs argv[2:], waits for it with os.wait4 and writes its wall time, peak RSS and exit code
# as JSON to argv[1]. Kept tiny: a child's ru_maxrss never starts below its parent's peak.
MEASURE = """\
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - start
child.returncode = code = os.waitstatus_to_exitcode(status)
scale = 1 if sys.platform == "darwin" else 1024
with open(sys.argv[1], "w") as out:
    json.dump({"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * scale, "exit_code": code}, out)
"""

SUMMARY = re.compile(
    r"sync of .*?: (?P<batches>[\d,]+) batch(?:es)? read .*? from (?P<pages>[\d,]+) pages? "
    r"and (?P<lookups>[\d,]+) lookups?"
)
REQUEST_LINES = re.compile(r"\((?P<lines>[\d,]+) request lines?\)")


@dataclass
class Measure:
    """One step of one latency, as measured."""

    step: str
    wall_s: float
    peak_rss_mb: float
    rows: int
    requests: int  # HTTP requests the simulator answered during the step
    exit_code: int = 0
    pages: int | None = None
    lookups: int | None = None
    ratio: float | None = None  # wall_s / bare fetch wall_s
    error: str = ""
    walls: list[float] = field(default_factory=list)  # every round's wall_s

    @property
    def spread(self) -> str:
        if len(self.walls) < 2:
            return "-"
        return f"{min(self.walls):.2f}-{max(self.walls):.2f}"

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Check:
    target: str
    measured: str
    met: bool


@dataclass
class LatencyRun:
    latency_ms: float
    name: str = ""  # a run of its own (result files), not one of the latencies
    open_batches: int = 0
    steps: list[Measure] = field(default_factory=list)
    warmup_s: float = 0.0  # the unmeasured warm-up, at 0 ms
    warmup_requests: int = 0
    warmup_rendered: int = 0  # answers the simulator rendered (not in its cache) while warming
    cached_answers: int = 0  # answers of the measured steps that came from the cache
    rendered_answers: int = 0  # ... and that the simulator had to render: 0 when warm
    cache_mb: float = 0.0

    def get(self, step: str) -> Measure | None:
        return next((m for m in self.steps if m.step == step), None)


# --- the simulator, in its own process ----------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str
    api_key: str

    def state(self) -> dict[str, Any]:
        root = self.base_url.rsplit("/v1", 1)[0]
        with urllib.request.urlopen(f"{root}/_sim/state", timeout=30) as response:
            return json.load(response)

    def request_count(self) -> int:
        # The state request itself is logged after it answers, so the next count includes it.
        return int(self.state()["requests"])

    def cache_counts(self) -> tuple[int, int]:
        """Answers served from the simulator's cache so far, and answers it had to render."""
        state = self.state()
        return int(state["cache_hits"]), int(state["cache_misses"])

    def set_latency(self, latency_ms: float) -> None:
        self.control("faults", json.dumps({"latency_ms": latency_ms}).encode())

    def enlarge(self, batch_id: str, lines: int, pad_bytes: int) -> None:
        """Make the batch's output file hold `lines` lines of about `pad_bytes` bytes each."""
        query = urllib.parse.urlencode(
            {"batch_id": batch_id, "lines": lines, "pad_bytes": pad_bytes}
        )
        self.control(f"enlarge?{query}", b"")

    def control(self, path: str, body: bytes) -> None:
        root = self.base_url.rsplit("/v1", 1)[0]
        request = urllib.request.Request(
            f"{root}/_sim/{path}", data=body, method="POST", headers={"Content-Type": "json"}
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def completed_with_output(self, count: int) -> list[str]:
        """Ids of `count` completed batches with an output file, from the listing."""
        request = urllib.request.Request(
            f"{self.base_url}/batches?limit=100",
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.load(response)["data"]
        done = [b["id"] for b in page if b["status"] == "completed" and b["output_file_id"]]
        if len(done) < count:
            raise SystemExit(f"bench: only {len(done)} completed batches to give result files")
        return done[:count]


@contextmanager
def simulator(*args: str, cache_mb: float) -> Iterator[Server]:
    """`sfbatches simulate ARGS` in its own process, answering before this yields."""
    from pipelines.simulator.process import served_elsewhere
    from pipelines.simulator.server import CACHE_MB_ENV

    with served_elsewhere(*args, env={CACHE_MB_ENV: f"{cache_mb:.0f}"}) as served:
        yield Server(served.process, served.base_url, served.api_key)


# --- running one measured step ------------------------------------------------------------------


def child_env(server: Server) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SILICONFLOW_API_KEY=server.api_key,
        SOURCES__SILICONFLOW__API_KEY=server.api_key,
        SOURCES__SILICONFLOW__BASE_URL=server.base_url,
        SOURCES__SILICONFLOW__PAGE_SIZE=str(PAGE_SIZE),
        RUNTIME__DLTHUB_TELEMETRY="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("SFBATCHES_DB", None)
    return env


def measure(argv: list[str], env: dict[str, str], workdir: Path) -> tuple[dict[str, Any], str]:
    """Run argv under the MEASURE wrapper; its figures and the step's stdout and stderr."""
    figures = workdir / "measure.json"
    output = workdir / "step.out"
    with open(output, "w") as out:
        subprocess.run(
            [sys.executable, "-c", MEASURE, str(figures), *argv],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    result = json.loads(figures.read_text())
    text = output.read_text(errors="replace")
    figures.unlink()
    output.unlink()
    return result, text


def run_step(name: str, argv: list[str], server: Server, workdir: Path) -> tuple[Measure, str]:
    before = server.request_count()
    figures, text = measure(argv, child_env(server), workdir)
    requests = server.request_count() - before - 1
    step = Measure(
        step=name,
        wall_s=figures["wall_s"],
        peak_rss_mb=figures["peak_rss_bytes"] / MB,
        rows=0,
        requests=requests,
        exit_code=figures["exit_code"],
    )
    if step.exit_code:
        step.error = last_line(text)
        tail = "\n".join(text.splitlines()[-40:])
        print(f"bench: {name} exited with {step.exit_code}:\n{tail}", file=sys.stderr)
    return step, text


def last_line(text: str) -> str:
    """The line most likely to say what failed: the last naming an error, else the last one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:200]


def this_script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def sfbatches(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines", *args]


def sync_batches(db: Path) -> list[str]:
    """The batches only: result files are measured on their own (`run_results`)."""
    return sfbatches("sync", "--no-models", "--no-results", "--db", str(db))


def parse_sync(step: Measure, text: str) -> None:
    match = SUMMARY.search(text)
    if match:
        step.rows = int(match["batches"].replace(",", ""))
        step.pages = int(match["pages"].replace(",", ""))
        step.lookups = int(match["lookups"].replace(",", ""))


def parse_json_line(step: Measure, text: str) -> None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            figures = json.loads(line)
            step.rows = int(figures.get("rows", 0))
            step.pages = figures.get("pages")
            return


def median_step(rounds: list[Measure]) -> Measure:
    """One step over its rounds: the round of median wall time, with every round's wall time,
    the highest peak RSS, the median ratio, and the first failure if a round failed."""
    ordered = sorted(rounds, key=lambda m: m.wall_s)
    middle = replace(ordered[(len(ordered) - 1) // 2])
    middle.walls = [m.wall_s for m in rounds]
    middle.peak_rss_mb = max(m.peak_rss_mb for m in rounds)
    ratios = [m.ratio for m in rounds if m.ratio is not None]
    middle.ratio = statistics.median_low(ratios) if ratios else None
    if failed := next((m for m in rounds if m.exit_code), None):
        middle.exit_code, middle.error = failed.exit_code, failed.error
    return middle


def set_ratio(measured: Measure, reference: Measure) -> None:
    if reference.wall_s > 0 and not reference.exit_code:
        measured.ratio = measured.wall_s / reference.wall_s


# --- one latency --------------------------------------------------------------------------------


def run_latency(
    args: argparse.Namespace, server: Server, latency_ms: float, root: Path
) -> LatencyRun:
    run = LatencyRun(latency_ms)
    workdir = Path(tempfile.mkdtemp(prefix=f"lat{latency_ms:g}-", dir=root))
    url = server.base_url
    warm_up(server, run, workdir)
    server.set_latency(latency_ms)
    hits_before, misses_before = server.cache_counts()

    def step(name: str, argv: list[str], parse: Any, rows: int | None = None) -> Measure:
        print(f"bench: {latency_ms:g} ms: {name} ...", file=sys.stderr, flush=True)
        measured, text = run_step(name, argv, server, workdir)
        parse(measured, text)
        if rows is not None:
            measured.rows = rows
        return measured

    rounds: defaultdict[str, list[Measure]] = defaultdict(list)
    dbs = [workdir / f"bench{number}.duckdb" for number in range(args.rounds)]
    for number, db in enumerate(dbs):
        bare = step("bare fetch", this_script("--step", "bare", "--base-url", url), parse_json_line)
        full = step("sync (full)", sync_batches(db), parse_sync)
        if not number:
            run.open_batches = count_open(db, server, workdir)
        incremental = step("sync (incremental)", sync_batches(db), parse_sync)
        for measured in (bare, full, incremental):
            set_ratio(measured, bare)
            rounds[measured.step].append(measured)
    run.steps = [median_step(measured) for measured in rounds.values()]
    bare, full = run.get("bare fetch"), run.get("sync (full)")
    models = sfbatches("models", "--db", str(dbs[-1]))
    later = [step("models", models, lambda *_: None, rows=full.rows)]
    if not args.skip_peer:
        peer_db = workdir / "peer.duckdb"
        argv = this_script("--step", "peer", "--base-url", url, "--db", str(peer_db))
        later.append(step("dlt rest_api (peer)", argv, parse_json_line))
    for measured in later:
        set_ratio(measured, bare)
    run.steps += later
    hits, misses = server.cache_counts()
    run.cached_answers, run.rendered_answers = hits - hits_before, misses - misses_before
    run.cache_mb = server.state()["cache_bytes"] / MB
    shutil.rmtree(workdir, ignore_errors=True)
    return run


def warm_up(server: Server, run: LatencyRun, workdir: Path) -> None:
    """Ask the simulator once, unmeasured and at 0 ms, everything the measured steps will ask.

    The bare fetch (and the peer) page like a full sync; the incremental sync re-reads pages
    that start at open batches, which only the same sync over the same database asks for.
    """
    server.set_latency(0)
    scratch = str(workdir / "warm-up.duckdb")
    _, misses_before = server.cache_counts()
    steps = (
        ("bare fetch", this_script("--step", "bare", "--base-url", server.base_url)),
        ("sync (full)", sync_batches(Path(scratch))),
        ("sync (incremental)", sync_batches(Path(scratch))),
    )
    for name, argv in steps:
        print(f"bench: {run.latency_ms:g} ms: warm-up: {name} ...", file=sys.stderr, flush=True)
        measured, _ = run_step(f"warm-up: {name}", argv, server, workdir)
        run.warmup_s += measured.wall_s
        run.warmup_requests += measured.requests
    run.warmup_rendered = server.cache_counts()[1] - misses_before


def count_open(db: Path, server: Server, workdir: Path) -> int:
    """Batches not terminal in the synced database: what an incremental sync must re-read."""
    if not db.exists():
        return 0
    figures, text = measure(
        this_script("--step", "open", "--db", str(db)), child_env(server), workdir
    )
    probe = Measure("open", 0, 0, 0, 0)
    parse_json_line(probe, text)
    return probe.rows if not figures["exit_code"] else 0


# --- result files -----------------------------------------------------------------------------


def run_results(rounds: int, root: Path) -> LatencyRun:
    """Result files: RESULT_FILES files of RESULT_LINES lines next to downloading the same
    files and reading them with DuckDB's read_json, in turn; then one file of about 1 GB, next
    to the same baseline for it (one round: it shows how large files fare, no target)."""
    run = LatencyRun(0.0, name="result files")
    workdir = Path(tempfile.mkdtemp(prefix="results-", dir=root))
    world = ("--batches", str(RESULT_WORLD), "--seed", str(SEED), "--max-requests", "1")
    with simulator(*world, cache_mb=1) as server:
        for batch_id in server.completed_with_output(RESULT_FILES):
            server.enlarge(batch_id, RESULT_LINES, LINE_BYTES)
        names = ("download + read_json", "sync with result files")
        pairs = [
            files_against_baseline(server, workdir / f"files{number}.duckdb", names)
            for number in range(rounds)
        ]
    run.steps = [median_step([pair[0] for pair in pairs]), median_step([pair[1] for pair in pairs])]
    with simulator(*world, cache_mb=1) as server:
        (big,) = server.completed_with_output(1)
        server.enlarge(big, BIG_FILE_LINES, BIG_LINE_BYTES)
        names = ("1 GB: download + read", "sync, one 1 GB file")
        run.steps += files_against_baseline(server, workdir / "big.duckdb", names)
    shutil.rmtree(workdir, ignore_errors=True)
    return run


def files_against_baseline(
    server: Server, db: Path, names: tuple[str, str]
) -> tuple[Measure, Measure]:
    """The baseline (download + read_json), then a sync into `db`, each with its ratio to the
    baseline."""
    workdir = db.parent
    baseline = results_step(
        server,
        workdir,
        names[0],
        this_script("--step", "files", "--base-url", server.base_url),
        parse_json_line,
    )
    sync = results_step(
        server,
        workdir,
        names[1],
        sfbatches("sync", "--no-models", "--db", str(db)),
        parse_request_lines,
    )
    set_ratio(baseline, baseline)
    set_ratio(sync, baseline)
    return baseline, sync


def results_step(server: Server, workdir: Path, name: str, argv: list[str], parse: Any) -> Measure:
    print(f"bench: result files: {name} ...", file=sys.stderr, flush=True)
    measured, text = run_step(name, argv, server, workdir)
    parse(measured, text)
    return measured


def parse_request_lines(step: Measure, text: str) -> None:
    found = REQUEST_LINES.search(text)
    if found:
        step.rows = int(found["lines"].replace(",", ""))


def download_and_read(base_url: str, api_key: str) -> dict[str, int]:
    """The baseline: list the batches, download every result file they name (as many at a time
    as the sync does) and count the lines DuckDB's read_json reads from them."""
    from concurrent.futures import ThreadPoolExecutor

    import duckdb
    import requests

    session = requests.Session()
    named = [
        (batch[kind], kind)
        for batch in every_batch(session, base_url, api_key)
        for kind in ("output_file_id", "error_file_id")
        if batch.get(kind) and batch["status"] in TERMINAL_STATUSES
    ]
    folder = Path(tempfile.mkdtemp(prefix="baseline-"))

    def fetch(index_ref: tuple[int, tuple[str, str]]) -> Path | None:
        index, (ref, _) = index_ref
        signed = ref.startswith("http")
        url = ref if signed else f"{base_url}/files/{ref}/content"
        headers = {} if signed else {"Authorization": f"Bearer {api_key}"}
        with session.get(url, headers=headers, stream=True, timeout=600) as response:
            if response.status_code != 200:
                return None
            path = folder / f"{index}.jsonl"
            with path.open("wb") as out:
                for chunk in response.iter_content(1 << 16):
                    out.write(chunk)
        return path

    with ThreadPoolExecutor(FILE_DOWNLOADS) as pool:
        paths = [str(path) for path in pool.map(fetch, enumerate(named)) if path]
    ((rows,),) = duckdb.execute(
        "select count(*) from read_json(?, format = 'newline_delimited', ignore_errors = true)",
        [paths],
    ).fetchall()
    shutil.rmtree(folder, ignore_errors=True)
    return {"rows": int(rows), "files": len(paths)}


def every_batch(session: Any, base_url: str, api_key: str) -> list[dict]:
    batches: list[dict] = []
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    headers = {"Authorization": f"Bearer {api_key}"}
    while True:
        page = session.get(f"{base_url}/batches", params=params, headers=headers).json()
        batches += page["data"]
        if not page.get("has_more") or not page["data"]:
            return batches
        params["after"] = page["data"][-1]["id"]


# --- targets and printing -----------------------------------------------------------------------


def checks(run: LatencyRun) -> list[Check]:
    at = f"@ {run.latency_ms:g} ms"
    found: list[Check] = []
    full, incremental = run.get("sync (full)"), run.get("sync (incremental)")
    models = run.get("models")
    if full and full.ratio is not None:
        limit = FULL_RATIO_AT_ZERO if run.latency_ms == 0 else FULL_RATIO_WITH_LATENCY
        found.append(
            Check(
                f"full sync <= {limit}x bare fetch {at}", f"{full.ratio:.2f}x", full.ratio <= limit
            )
        )
    ours = [m for m in (full, incremental, models) if m]
    if ours:
        peak = max(m.peak_rss_mb for m in ours)
        found.append(
            Check(
                f"sync and models peak RSS <= {RSS_LIMIT_MB:.0f} MB {at}",
                f"{peak:.0f} MB",
                peak <= RSS_LIMIT_MB,
            )
        )
    if incremental:
        found += incremental_checks(incremental, run.open_batches, at)
    if models:
        found.append(
            Check(
                f"models <= {MODELS_WALL_S:g} s {at}",
                f"{models.wall_s:.2f} s",
                models.wall_s <= MODELS_WALL_S and not models.exit_code,
            )
        )
    return found


def results_checks(run: LatencyRun) -> list[Check]:
    found: list[Check] = []
    ours, big = run.get("sync with result files"), run.get("sync, one 1 GB file")
    if ours and ours.ratio is not None:
        found.append(
            Check(
                f"result files <= {RESULTS_RATIO}x download + read_json",
                f"{ours.ratio:.2f}x, {ours.peak_rss_mb:.0f} MB",
                ours.ratio <= RESULTS_RATIO and not ours.exit_code,
            )
        )
    if big:
        found.append(
            Check(
                f"one 1 GB result file: peak RSS <= {RSS_LIMIT_MB:.0f} MB",
                f"{big.peak_rss_mb:.0f} MB",
                big.peak_rss_mb <= RSS_LIMIT_MB and not big.exit_code,
            )
        )
    return found


def incremental_checks(step: Measure, open_batches: int, at: str) -> list[Check]:
    from pipelines.siliconflow.settings import DEFAULT_SWEEP_PAGES

    budget = INCREMENTAL_LIST_REQUESTS + DEFAULT_SWEEP_PAGES + open_batches
    detail = (
        f"{step.requests} requests ({step.pages} pages + {step.lookups} lookups; "
        f"{open_batches} open batches)"
    )
    return [
        Check(
            f"no-op incremental <= {INCREMENTAL_LIST_REQUESTS} list requests + "
            f"{DEFAULT_SWEEP_PAGES} sweep pages + one per open batch {at}",
            detail,
            step.requests <= budget and not step.exit_code,
        ),
        Check(
            f"no-op incremental <= {INCREMENTAL_WALL_S:g} s wall {at}",
            f"{step.wall_s:.2f} s",
            step.wall_s <= INCREMENTAL_WALL_S and not step.exit_code,
        ),
    ]


def table(run: LatencyRun) -> str:
    if run.name:
        return "\n".join([run.name, *step_rows(run.steps, "x baseline")])
    lines = [
        f"latency {run.latency_ms:g} ms per request",
        f"warm-up (bare fetch, full and no-op sync; not measured, 0 ms): {run.warmup_s:.2f} s, "
        f"{run.warmup_requests:,} requests, {run.warmup_rendered:,} rendered by the simulator",
        f"measured steps: {run.cached_answers:,} answers from the simulator's cache "
        f"({run.cache_mb:.0f} MB), {run.rendered_answers:,} rendered anew",
    ]
    return "\n".join([*lines, *step_rows(run.steps, "x bare fetch")])


def step_rows(steps: list[Measure], ratio_name: str) -> list[str]:
    head = (
        f"{'step':<22} {'wall s':>8} {'rounds s':>11} {'peak RSS MB':>12} {'rows':>9} "
        f"{'rows/s':>10} {ratio_name:>13} {'requests':>9}"
    )
    lines = [head, "-" * len(head)]
    for m in steps:
        ratio = f"{m.ratio:.2f}x" if m.ratio is not None else "-"
        lines.append(
            f"{m.step:<22} {m.wall_s:>8.2f} {m.spread:>11} {m.peak_rss_mb:>12.0f} {m.rows:>9,} "
            f"{m.rows_per_s:>10,.0f} {ratio:>13} {m.requests:>9,}"
        )
        if m.error:
            lines.append(f"  ! exit {m.exit_code}: {m.error}")
    return lines


def targets_block(found: list[Check]) -> str:
    target_width = max((len(c.target) for c in found), default=10)
    measured_width = max((len(c.measured) for c in found), default=10)
    lines = ["targets"]
    for c in found:
        verdict = "met" if c.met else "NOT met"
        lines.append(f"  {c.target:<{target_width}}  {c.measured:<{measured_width}}  {verdict}")
    return "\n".join(lines)


# --- the steps that run in their own process (`--step`) -----------------------------------------


def bare_fetch(base_url: str, api_key: str) -> dict[str, int]:
    """The floor: page through the listing with one keep-alive session and parse every page."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    url = f"{base_url.rstrip('/')}/batches"
    rows = pages = 0
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    while True:
        response = session.get(url, params=params, timeout=60)
        response.raise_for_status()
        page = response.json()
        pages += 1
        data = page["data"]
        rows += len(data)
        if not page.get("has_more") or not data:
            return {"rows": rows, "pages": pages}
        params["after"] = page.get("last_id") or data[-1]["id"]


def peer_sync(base_url: str, api_key: str, db: Path) -> dict[str, int]:
    """dlt's generic `rest_api` source, configured for this API, merged on `id` into DuckDB."""
    import dlt
    from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
    from dlt.sources.rest_api import rest_api_source

    paginator = JSONResponseCursorPaginator(
        cursor_path="last_id", cursor_param="after", has_more_path="has_more"
    )
    source = rest_api_source(
        {
            "client": {
                "base_url": base_url.rstrip("/") + "/",
                "auth": {"type": "bearer", "token": api_key},
                "paginator": paginator,
            },
            "resources": [
                {
                    "name": "batches",
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": "batches",
                        "params": {"limit": PAGE_SIZE},
                        "data_selector": "data",
                    },
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_peer",
        pipelines_dir=str(db.with_name(f".{db.name}.dlt")),
        destination=dlt.destinations.duckdb(credentials=str(db)),
        dataset_name="siliconflow",
    )
    pipeline.run(source)
    counts = pipeline.last_trace.last_normalize_info.row_counts
    return {"rows": int(counts.get("batches", 0))}


def open_count(db: Path) -> dict[str, int]:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "select count(*) from siliconflow.batches where not list_contains(?, lower(status))",
            [sorted(TERMINAL_STATUSES)],
        ).fetchone()
    return {"rows": int(row[0]) if row else 0}


def child_step(args: argparse.Namespace) -> int:
    api_key = os.environ.get("SILICONFLOW_API_KEY", FALLBACK_API_KEY)
    if args.step == "bare":
        figures = bare_fetch(args.base_url, api_key)
    elif args.step == "files":
        figures = download_and_read(args.base_url, api_key)
    elif args.step == "peer":
        figures = peer_sync(args.base_url, api_key, Path(args.db))
    else:
        figures = open_count(Path(args.db))
    print(json.dumps(figures), flush=True)
    return 0


# --- the whole run ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batches", type=batch_count, default=DEFAULT_BATCHES, help="simulated batches (100,000)"
    )
    parser.add_argument(
        "--latencies", type=latencies, default=[0.0, 50.0], help="ms per request, e.g. 0,50"
    )
    parser.add_argument(
        "--skip-peer",
        action="store_true",
        help="leave out dlt's rest_api peer (slow and several GB of RSS at 100,000+ batches)",
    )
    parser.add_argument(
        "--skip-results", action="store_true", help="leave out the result files' run"
    )
    parser.add_argument(
        "--rounds",
        type=round_count,
        default=DEFAULT_ROUNDS,
        help=f"times each compared step runs, in turn with its reference ({DEFAULT_ROUNDS})",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--step", choices=("bare", "peer", "open", "files"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def batch_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BATCHES:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_BATCHES:,}, not {value:,}")
    return value


def round_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def latencies(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"need milliseconds of 0 or more, not {text!r}")
    return values


def rss_floor(root: Path) -> float:
    """The lowest peak RSS the wrapper can report (a trivial process measured the same way)."""
    figures, _ = measure([sys.executable, "-c", "pass"], dict(os.environ), root)
    return figures["peak_rss_bytes"] / MB


def bench(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="sfbatches-bench-"))
    runs: list[LatencyRun] = []
    try:
        floor = rss_floor(root)
        print(f"bench: starting the simulator with {args.batches:,} batches", file=sys.stderr)
        cache_mb = max(CACHE_BYTES_FLOOR, args.batches * CACHE_BYTES_PER_BATCH) / MB
        with simulator(
            "--batches", str(args.batches), "--seed", str(SEED), cache_mb=cache_mb
        ) as server:
            for latency_ms in args.latencies:
                runs.append(run_latency(args, server, latency_ms, root))
        results = None if args.skip_results else run_results(args.rounds, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args, runs, floor, results)
    return 0


def report(
    args: argparse.Namespace, runs: list[LatencyRun], floor: float, results: LatencyRun | None
) -> None:
    print(
        f"\nsfbatches bench: {args.batches:,} batches, page size {PAGE_SIZE}, simulator in its "
        f"own process; peak RSS of a bare `python -c pass` measured the same way: {floor:.0f} MB"
    )
    found: list[Check] = []
    for run in runs:
        print()
        print(table(run))
        found += checks(run)
    if results is not None:
        print()
        print(table(results))
        found += results_checks(results)
        runs = [*runs, results]
    print()
    print(targets_block(found))
    if args.batches != DEFAULT_BATCHES:
        print(
            f"  (the time targets are stated for {DEFAULT_BATCHES:,} batches; this run used "
            f"{args.batches:,})"
        )
    print(
        "  (peak RSS must also stay flat as batches grow: compare with a run at "
        f"--batches {MAX_BATCHES:,})"
    )
    if args.json:
        payload = {
            "batches": args.batches,
            "rss_floor_mb": floor,
            "runs": [
                {
                    **asdict(run),
                    "steps": [{**asdict(m), "rows_per_s": m.rows_per_s} for m in run.steps],
                }
                for run in runs
            ],
            "targets": [asdict(c) for c in found],
        }
        args.json.write_text(json.dumps(payload, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step:
        return child_step(args)
    return bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
