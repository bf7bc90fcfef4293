"""`sfbatches report --html`, looked at as a person would: rendered by headless Chromium at
laptop and phone sizes, its charts drawn, its numbers those of the views, nothing fetched from
the network, and the file written whole and never over someone else's."""

import base64
import html.parser
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import REPO, run_process
from matplotlib.dates import num2date
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from pipelines import cli
from pipelines.analytics import charts, dashboard
from pipelines.analytics.check import Limits
from pipelines.analytics.report import duration
from pipelines.simulator import TERMINAL, Simulator, World
from pipelines.warehouse.database import open_database
from pipelines.wording import counted

HOUR = 3600
LAPTOP = (1280, 900)
PHONE = (390, 844)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Iterator[Path]:
    """A synced warehouse (batches and result files) of a wall-clock world with one batch
    stuck in the queue, its models built."""
    db_path = tmp_path_factory.mktemp("html") / "warehouse.duckdb"
    world = World(batches=500, seed=31, max_requests=25)
    # the newest batch old enough for the queue rule (12 h): some exists at any time of day
    queued = max(
        (b for b in world.visible() if b["created_at"] <= world.now - 14 * HOUR),
        key=lambda b: b["created_at"],
    )["id"]
    world.stick(queued, "queue", world.now)
    with Simulator(world) as sim, pytest.MonkeyPatch.context() as env:
        env.setenv("SOURCES__SILICONFLOW__BASE_URL", sim.base_url)
        env.setenv("SILICONFLOW_API_KEY", sim.api_key)
        env.setenv("SOURCES__SILICONFLOW__RESULTS", "true")
        assert cli.main(["sync", "--db", str(db_path)]) == 0
    return db_path


@pytest.fixture(scope="module")
def page(warehouse: Path) -> Path:
    target = warehouse.parent / "report.html"
    assert cli.main(["report", "--db", str(warehouse), "--html", str(target)]) == 0
    return target


@pytest.fixture(scope="module")
def chromium() -> Iterator[webdriver.Chrome]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "the HTML report tests need Debian's chromium and chromium-driver: `make test` "
            "installs them when run as root, else `sudo apt-get install chromium chromium-driver`"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    with webdriver.Chrome(options=options, service=Service(executable_path=driver)) as chrome:
        yield chrome


def show(chrome: webdriver.Chrome, page: Path, size: tuple[int, int]) -> None:
    chrome.set_window_size(*size)
    chrome.get(page.as_uri())


def query(db_path: Path, sql: str, parameters: list | None = None) -> list[tuple]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        return con.execute(sql, parameters or []).fetchall()


def window(days: int = 7) -> list:
    last = datetime.now(UTC).date()
    return [last - timedelta(days=days - 1), last]


def stated_window(page: Path) -> list:
    """The days the page says it covers: the module's page may have been made before a UTC
    midnight that passed since."""
    days = re.search(r"(\d{4}-\d\d-\d\d) to (\d{4}-\d\d-\d\d) \(UTC\)", page.read_text())
    return [date.fromisoformat(day) for day in days.groups()]


# --- what is on the page ---------------------------------------------------------------------


class Resources(html.parser.HTMLParser):
    """Every URL the page would load: src, href, srcset, and url() in style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action") and value:
                self.urls.append(value)

    def handle_data(self, data):
        if "url(" in data or "@import" in data:
            self.urls.append(data)


def test_the_page_needs_no_network_at_all(page):
    text = page.read_text()
    found = Resources()
    found.feed(text)
    assert text.startswith("<!DOCTYPE html>\n<!-- sfbatches report --html -->")
    assert "script" not in found.tags and "link" not in found.tags
    assert found.urls, "the charts are images"
    assert all(url.startswith("data:image/svg+xml;base64,") for url in found.urls), [
        url[:60] for url in found.urls if not url.startswith("data:")
    ]


@pytest.mark.parametrize("size", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_every_chart_is_drawn(chromium, page, size):
    assert_every_chart_drawn(chromium, page, size)


def test_a_decade_long_window_draws_every_chart_in_few_shapes(chromium, warehouse, tmp_path):
    target = tmp_path / "decade.html"
    argv = ["report", "--db", str(warehouse), "--html", str(target), "--days", "3650"]
    assert cli.main(argv) == 0

    assert_every_chart_drawn(chromium, target, LAPTOP)
    found = Resources()
    found.feed(target.read_text())
    # a bar is a shape of its own: a decade of days by model would be tens of thousands
    shapes = [base64.b64decode(url.split(",", 1)[1]).count(b"<path") for url in found.urls]
    assert len(shapes) == 6 and max(shapes) < 1_000, shapes


def assert_every_chart_drawn(chromium: webdriver.Chrome, page: Path, size: tuple[int, int]) -> None:
    show(chromium, page, size)
    images = chromium.find_elements(By.CSS_SELECTOR, "img.chart")
    names = [image.get_attribute("data-chart") for image in images]
    assert names == ["turnaround", "daily_turnaround", "throughput", "statuses", "tokens", "cost"]
    for image in images:
        chromium.execute_script("arguments[0].scrollIntoView()", image)
        assert chromium.execute_script("return arguments[0].naturalWidth", image) > 0
        assert image.size["width"] <= size[0]
        shot = np.asarray(Image.open(io.BytesIO(image.screenshot_as_png)).convert("RGB"))
        inked = (shot.min(axis=2) < 200).mean()
        colours = len(np.unique(shot.reshape(-1, 3), axis=0))
        assert inked > 0.02, f"{image.get_attribute('data-chart')} looks blank"
        assert colours > 20, f"{image.get_attribute('data-chart')} has no detail"


def test_a_phone_never_scrolls_sideways(chromium, page):
    show(chromium, page, PHONE)
    wide, view = chromium.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert wide <= view
    for card in chromium.find_elements(By.CSS_SELECTOR, ".card"):
        assert card.rect["x"] + card.rect["width"] <= view


def card(chromium, name: str) -> str:
    return chromium.find_element(By.CSS_SELECTOR, f'[data-figure="{name}"] .value').text


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_headline_figures_are_the_views(chromium, page, warehouse):
    show(chromium, page, LAPTOP)
    span = stated_window(page)
    # the last 7 days up to the day the page was made: today, or yesterday past midnight
    assert span[1] - span[0] == timedelta(days=6)
    assert span[1] in window(2)
    ((created,),) = query(
        warehouse,
        "select count(*) from analytics.batch_turnaround "
        "where cast(timezone('UTC', created_at) as date) between ? and ?",
        span,
    )
    ((open_now,),) = query(warehouse, "select count(*) from analytics.open_batches")
    ((done,),) = query(
        warehouse,
        "select sum(requests_completed) from analytics.batch_turnaround where status = "
        "'completed' and cast(timezone('UTC', ended_at) as date) between ? and ?",
        span,
    )
    ((t50, t90),) = query(
        warehouse,
        "select quantile_cont(turnaround_seconds, 0.5), quantile_cont(turnaround_seconds, 0.9) "
        "from analytics.batch_turnaround where status = 'completed' "
        "and cast(timezone('UTC', created_at) as date) between ? and ?",
        span,
    )
    assert number(card(chromium, "batches_created")) == created
    assert number(card(chromium, "open_batches")) == open_now
    assert number(card(chromium, "requests_completed")) == done
    assert card(chromium, "turnaround_p50") == duration(t50)
    note = chromium.find_element(By.CSS_SELECTOR, '[data-figure="turnaround_p50"] .note').text
    assert note == f"p90 {duration(t90)}"
    heading = chromium.find_element(By.CSS_SELECTOR, "#open h2").text
    assert heading == f"Open batches ({open_now:,})"


def rows(chromium, section: str) -> list[list[str]]:
    table = chromium.find_element(By.CSS_SELECTOR, f"#{section} table")
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]


def test_tables_are_the_views_row_for_row(chromium, page, warehouse):
    show(chromium, page, LAPTOP)
    span = stated_window(page)
    daily = query(
        warehouse,
        "select created_date, endpoint, batches, completed, failed, expired, cancelled, "
        "in_flight from analytics.daily_turnaround where created_date between ? and ? "
        "order by created_date desc, endpoint",
        span,
    )
    assert [row[:8] for row in rows(chromium, "daily")] == [
        [day.isoformat(), endpoint, *(f"{n:,}" for n in counts)] for day, endpoint, *counts in daily
    ]
    opened = query(
        warehouse,
        "select batch_id, status from analytics.open_batches "
        "order by age_seconds desc, batch_id limit 20",
    )
    assert [row[:2] for row in rows(chromium, "open")] == [list(row) for row in opened]
    usage = query(
        warehouse,
        "select usage_date, model, batches, requests, requests_failed, prompt_tokens, "
        "completion_tokens from analytics.daily_usage where usage_date between ? and ? "
        "order by usage_date desc, model",
        span,
    )
    assert usage, "the world's result files give usage"
    assert [row[:7] for row in rows(chromium, "usage")] == [
        [
            day.isoformat(),
            model or "(unknown model)",
            *("-" if n is None else f"{n:,}" for n in counts),
        ]
        for day, model, *counts in usage
    ]


def checked(warehouse: Path) -> list[str]:
    """What `sfbatches check` reports now, one `rule: message` line per problem."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "check", "--db", str(warehouse), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    return [f"{p['rule']}: {p['message']}" for p in json.loads(done.stdout)["problems"]]


def test_problems_are_those_check_reports(chromium, warehouse, tmp_path):
    # Ages in the lines move with the wall clock: the page is made between two checks and
    # equals one of them (both, unless an age's last digit turned meanwhile).
    before = checked(warehouse)
    page = tmp_path / "report.html"
    assert cli.main(["report", "--db", str(warehouse), "--html", str(page)]) == 0
    after = checked(warehouse)
    show(chromium, page, LAPTOP)
    shown = [item.text for item in chromium.find_elements(By.CSS_SELECTOR, "#problems li")]
    assert shown in (before, after)
    assert any(line.startswith("queue: ") for line in shown)


# --- writing the file ----------------------------------------------------------------------------


def report_html(db_path: Path, target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "report", "--db", str(db_path), "--html", str(target)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "SFBATCHES_DB": ""},
    )


@pytest.mark.parametrize("content", [b"<html>my own page</html>\n", b"notes\n", b""])
def test_html_never_overwrites_a_file_it_did_not_write(warehouse, tmp_path, content):
    target = tmp_path / "index.html"
    target.write_bytes(content)
    done = report_html(warehouse, target)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"sfbatches: {target} exists and was not written by sfbatches: it is left as it is; "
        "choose another file, or remove it first"
    )
    assert target.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_html_replaces_its_own_page_whole_and_readable_by_a_web_server(warehouse, tmp_path):
    target = tmp_path / "sf.html"
    assert report_html(warehouse, target).returncode == 0
    target.write_text(target.read_text().replace("SiliconFlow batches", "OLD PAGE"))
    done = report_html(warehouse, target)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert "OLD PAGE" not in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["sf.html"]  # no temporary file left
    assert stat.S_IMODE(target.stat().st_mode) & 0o444 == 0o444


def not_a_plain_file(tmp_path: Path, kind: str) -> Path:
    """A pipe, a copy of /dev/null (root only) or a link to a pipe, as a target."""
    target = tmp_path / kind
    if kind == "link to a pipe":
        os.mkfifo(tmp_path / "pipe")
        target.symlink_to(tmp_path / "pipe")
    elif kind == "pipe":
        os.mkfifo(target)
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return target


@pytest.mark.parametrize("kind", ["pipe", "device", "link to a pipe"])
def test_html_leaves_a_device_pipe_or_link_to_one_alone(warehouse, tmp_path, kind):
    target = not_a_plain_file(tmp_path, kind)
    before = identity(target)

    done = report_html(warehouse, target)

    assert done.returncode == 2 and "not a plain file" in done.stderr, done.stderr
    assert identity(target) == before


def identity(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_ino, info.st_mode, info.st_mtime_ns


def test_html_through_a_link_replaces_the_page_it_points_at(warehouse, tmp_path):
    page = tmp_path / "pages" / "sf.html"
    page.parent.mkdir()
    assert report_html(warehouse, page).returncode == 0
    link = tmp_path / "index.html"
    link.symlink_to(page)
    page.write_text(page.read_text().replace("SiliconFlow batches", "OLD PAGE"))

    assert report_html(warehouse, link).returncode == 0

    assert link.is_symlink() and link.resolve() == page
    assert "OLD PAGE" not in page.read_text() and "SiliconFlow batches" in page.read_text()
    assert sorted(p.name for p in page.parent.iterdir()) == ["sf.html"]


def test_a_warehouse_without_result_files_says_so(tmp_path, chromium):
    db_path = tmp_path / "plain.duckdb"
    world = World(batches=200, seed=4, max_requests=10)
    with Simulator(world) as sim, pytest.MonkeyPatch.context() as env:
        env.setenv("SOURCES__SILICONFLOW__BASE_URL", sim.base_url)
        env.setenv("SILICONFLOW_API_KEY", sim.api_key)
        assert cli.main(["sync", "--no-results", "--db", str(db_path)]) == 0
    target = tmp_path / "plain.html"
    assert cli.main(["report", "--db", str(db_path), "--html", str(target)]) == 0
    show(chromium, target, PHONE)
    charts = [i.get_attribute("data-chart") for i in chromium.find_elements(By.CSS_SELECTOR, "img")]
    assert charts == ["turnaround", "daily_turnaround", "throughput", "statuses"]
    usage = chromium.find_element(By.ID, "usage").text
    assert "No result files loaded" in usage


def test_a_page_made_by_cron_for_chinese_model_names_prints_nothing(warehouse, tmp_path):
    # cron's environment: a home folder that does not exist, so matplotlib has no config folder
    db_path = tmp_path / "zh.duckdb"
    shutil.copy(warehouse, db_path)
    with duckdb.connect(str(db_path)) as con:
        con.execute("update siliconflow.batch_requests set model = '通义千问/Qwen-' || model")
    assert cli.main(["models", "--db", str(db_path)]) == 0
    target = tmp_path / "zh.html"
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path / "nowhere")

    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "report", "--db", str(db_path), "--html", str(target)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )

    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert "通义千问" in target.read_text()


def test_a_long_model_name_wraps_and_leaves_every_column_in_view(chromium, warehouse, tmp_path):
    db_path = tmp_path / "long.duckdb"
    shutil.copyfile(warehouse, db_path)
    long = "Pro/deepseek-ai/DeepSeek-R1-Distill-Qwen-32B-" + "instruct-" * 8 + "preview"
    with duckdb.connect(str(db_path)) as con:
        con.execute(
            "update siliconflow.batch_requests set model = ? where model is not null", [long]
        )
    target = tmp_path / "long.html"
    assert cli.main(["report", "--db", str(db_path), "--html", str(target)]) == 0

    show(chromium, target, LAPTOP)
    table = chromium.find_element(By.CSS_SELECTOR, "#usage table")
    chromium.execute_script("arguments[0].scrollIntoView()", table)
    shown_width, box_width = chromium.execute_script(
        "const box = arguments[0].parentElement; return [box.scrollWidth, box.clientWidth]", table
    )

    assert long in table.text.replace("\n", "")
    assert shown_width <= box_width


def test_the_daily_turnaround_line_breaks_on_a_day_without_completed_batches(
    warehouse, tmp_path, monkeypatch
):
    gapped = tmp_path / "gapped.duckdb"
    shutil.copy(warehouse, gapped)
    completed_days = [
        day
        for (day,) in query(
            gapped,
            "select distinct cast(timezone('UTC', created_at) as date) as day "
            "from analytics.batch_turnaround where status = 'completed' order by day",
        )
    ]
    assert len(completed_days) >= 3
    gap = completed_days[len(completed_days) // 2]
    with duckdb.connect(str(gapped)) as con:
        con.execute(
            "delete from siliconflow.batches "
            "where cast(timezone('UTC', created_at) as date) = ? and status = 'completed'",
            [gap],
        )
    drawn = {}

    def keep(name: str, title: str, figure, caption: str) -> None:
        drawn[name] = figure

    monkeypatch.setattr(dashboard, "chart", keep)

    with open_database(gapped, read_only=True) as con:
        dashboard.turnaround_charts(con, [completed_days[0], completed_days[-1]])

    for line in drawn["daily_turnaround"].axes[0].lines:  # p50, p90
        days = [num2date(x).date() for x in line.get_xdata(orig=False)]
        assert days == [
            completed_days[0] + timedelta(days=n)
            for n in range((completed_days[-1] - completed_days[0]).days + 1)
        ]
        heights = dict(zip(days, line.get_ydata(orig=False), strict=True))
        assert np.isnan(heights[gap])
        assert not np.isnan(heights[completed_days[0]])


CHART = re.compile(r'data-chart="(\w+)" src="([^"]+)"')


def charts_drawn_in(zone: str, db_path: Path, folder: Path) -> dict[str, str]:
    """Each chart of the page `report --html` writes on a machine in time zone `zone`, as the
    image it shows."""
    target = folder / f"{zone.replace('/', '-')}.html"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "report", "--db", str(db_path), "--html", str(target)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TZ": zone},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return dict(CHART.findall(target.read_text()))


def test_every_chart_reads_utc_whatever_the_machines_time_zone(warehouse, tmp_path):
    in_utc = charts_drawn_in("UTC", warehouse, tmp_path)
    assert {"turnaround", "daily_turnaround", "throughput", "tokens", "cost"} <= in_utc.keys()

    for zone in ("Asia/Shanghai", "America/Los_Angeles"):
        assert charts_drawn_in(zone, warehouse, tmp_path) == in_utc, zone


def page_figures(db_path: Path, days: int = 7) -> dict:
    """Each chart of the page `report --html` makes from `db_path`, by name, as the figure it
    was drawn from, with its title as `figure.page_title`."""
    drawn = {}
    shown = dashboard.chart

    def keep(name: str, title: str, figure, caption: str):
        drawn[name] = figure
        figure.page_title = title
        return shown(name, title, figure, caption)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dashboard, "chart", keep)
        dashboard.render_html_at(db_path, Limits(), days)
    return drawn


def test_files_no_sync_fetched_yet_are_a_card_saying_the_figures_leave_them_out(
    chromium, warehouse, tmp_path
):
    db_path = tmp_path / "unfetched.duckdb"
    shutil.copy(warehouse, db_path)
    with duckdb.connect(str(db_path)) as con:  # as a first sync that took 10,000 files leaves
        deleted = con.execute(
            "delete from siliconflow.batch_files where state = 'loaded' and batch_id in "
            "(select id from siliconflow.batches order by id limit 60) returning batch_id"
        ).fetchall()
    first_day = datetime.now(UTC).date() - timedelta(days=6)
    ended_in_window = set()
    for batch_id, status, *times in query(
        db_path,
        "select id, status, completed_at, failed_at, expired_at, cancelled_at "
        "from siliconflow.batches",
    ):
        ended = next((time for time in times if time is not None), None)  # SPEC's ended_at
        if status in TERMINAL and ended and ended.astimezone(UTC).date() >= first_day:
            ended_in_window.add(batch_id)
    unfetched = sum(batch_id in ended_in_window for (batch_id,) in deleted)
    page = tmp_path / "unfetched.html"
    assert unfetched and cli.main(["report", "--db", str(db_path), "--html", str(page)]) == 0

    show(chromium, page, LAPTOP)

    note = chromium.find_element(By.CSS_SELECTOR, '[data-figure="files_not_loaded"] .note').text
    assert note.startswith(f"{counted(unfetched, 'file')} not fetched yet (later syncs fetch")
    assert note.endswith(": not counted")
    assert int(card(chromium, "files_not_loaded").replace(",", "")) >= unfetched


def test_the_hourly_throughput_bars_stand_on_utc_hours(warehouse):
    drawn = page_figures(warehouse)
    hours = query(
        warehouse,
        "select distinct strftime(timezone('UTC', hour), '%Y-%m-%d %H:00') "
        "from analytics.hourly_throughput where hour >= ?",
        [datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=6)],
    )
    top = drawn["throughput"].axes[0]
    starts = {bar.get_x() for bar in top.patches}
    assert drawn["throughput"].page_title == "Throughput per hour"
    assert {num2date(x).strftime("%Y-%m-%d %H:00") for x in starts} == {h for (h,) in hours}


@pytest.mark.parametrize("back", [0, 450], ids=["a month", "one batch 450 days back"])
def test_a_long_window_shows_throughput_per_day_as_its_batches_add_up(warehouse, tmp_path, back):
    db_path = tmp_path / "long.duckdb"
    shutil.copy(warehouse, db_path)
    with duckdb.connect(str(db_path)) as con:  # the first completed batch, `back` days earlier
        con.execute(
            "update siliconflow.batches set completed_at = completed_at - to_days(?) "
            "where id = (select id from siliconflow.batches where status = 'completed' "
            "order by completed_at limit 1)",
            [back],
        )
    days = 30 if not back else 500
    last = datetime.now(UTC).date()
    expected = {last - timedelta(days=n): 0.0 for n in range(days)}
    for completed_at, requests in query(
        db_path,
        "select batches.completed_at, counts.completed from siliconflow.batches "
        "inner join siliconflow.batch_request_counts as counts on counts.batch_id = batches.id "
        "where batches.status = 'completed'",
    ):
        day = completed_at.astimezone(UTC).date()
        if day in expected:
            expected[day] += (requests or 0) / 86_400  # requests per second of the day
    held = [day for day, value in expected.items() if value]  # from the first day with data

    figure = page_figures(db_path, days)["throughput"]

    top = figure.axes[0]
    if max(held) - min(held) < timedelta(days=charts.MOST_BARS):  # a bar a day
        shown = {num2date(bar.get_x()).date(): bar.get_height() for bar in top.patches}
        assert {bar.get_width() for bar in top.patches} == {1.0}
    else:  # so many days that they are one filled outline
        [outline] = top.patches
        steps = outline.get_data()
        shown = {num2date(x).date(): v for x, v in zip(steps.edges[:-1], steps.values, strict=True)}
    assert figure.page_title == "Throughput per day"
    assert len(shown) > (400 if back else 7)
    assert shown == pytest.approx(
        {day: value for day, value in expected.items() if min(held) <= day <= max(held)}
    )


@pytest.mark.parametrize(
    ("rate", "queue", "said"),
    [
        ("0.245", "12", "sync 1 h, queue 12 h, finalizing 2 h, failed requests 24.5%"),
        ("0.005", "0.5", "sync 1 h, queue 0.5 h, finalizing 2 h, failed requests 0.5%"),
    ],
)
def test_the_limits_line_shows_each_limit_as_given(
    chromium, warehouse, tmp_path, monkeypatch, rate, queue, said
):
    monkeypatch.setenv("ALERTS__MAX_FAILURE_RATE", rate)
    monkeypatch.setenv("ALERTS__MAX_QUEUE_HOURS", queue)
    page = tmp_path / "limits.html"
    assert cli.main(["report", "--db", str(warehouse), "--html", str(page)]) == 0

    show(chromium, page, LAPTOP)

    line = chromium.find_element(By.CSS_SELECTOR, '[data-figure="limits"]').text
    assert line == f"Limits: {said} (sfbatches check applies the same rules)."


def test_costs_in_two_currencies_stay_apart_and_a_failed_batch_is_not_unpriced(
    chromium, warehouse, tmp_path
):
    db_path = tmp_path / "currencies.duckdb"
    shutil.copy(warehouse, db_path)
    start, end = window()
    ended = [
        batch_id
        for (batch_id,) in query(
            db_path,
            "select usage.batch_id from analytics.batch_usage as usage "
            "join analytics.batch_turnaround as t using (batch_id) "
            "where usage.estimated_cost is not null "
            "and cast(timezone('UTC', t.ended_at) as date) between ? and ? order by 1",
            [start, end],
        )
    ]
    in_usd, all_failed = ended[:3], ended[3]
    with duckdb.connect(str(db_path)) as con:
        con.execute(
            "insert into analytics.seed_model_prices (model, input_per_million, "
            "output_per_million, currency, source, as_of) "
            "values ('test/usd-model', '3', '9', 'USD', 'a test', '2026-01-01')"
        )
        con.execute(
            "update siliconflow.batch_requests set model = 'test/usd-model' "
            f"where batch_id in ({', '.join('?' * len(in_usd))}) and model is not null",
            in_usd,
        )
        con.execute(
            "update siliconflow.batch_requests set model = null, prompt_tokens = null, "
            "completion_tokens = null, total_tokens = null, status_code = 500, "
            "error_code = 'server_error' where batch_id = ?",
            [all_failed],
        )
    ((unpriced,),) = query(
        db_path,
        "select count(*) from analytics.batch_usage as usage "
        "join analytics.batch_turnaround as t using (batch_id) "
        "where usage.estimated_cost is null "
        "and coalesce(usage.prompt_tokens, 0) + coalesce(usage.completion_tokens, 0) > 0 "
        "and cast(timezone('UTC', t.ended_at) as date) between ? and ?",
        [start, end],
    )
    page = tmp_path / "currencies.html"
    assert cli.main(["report", "--db", str(db_path), "--html", str(page)]) == 0

    show(chromium, page, LAPTOP)

    charts = [i.get_attribute("data-chart") for i in chromium.find_elements(By.CSS_SELECTOR, "img")]
    assert charts[-2:] == ["cost_cny", "cost_usd"]
    heading = chromium.find_elements(By.CSS_SELECTOR, "#usage thead th")[-1].text
    assert heading == "cost"
    costs = {(row[1], row[-1].split(" ")[-1]) for row in rows(chromium, "usage")}
    assert ("test/usd-model", "USD") in costs
    assert {currency for model, currency in costs if model != "test/usd-model"} <= {
        "CNY",
        "price",  # "no price", a model without one
        "-",  # nothing to price: every request of the day's batches failed
    }
    note = chromium.find_element(By.CSS_SELECTOR, '[data-figure="estimated_cost"] .note').text
    assert note == (f"{counted(unpriced, 'batch')} without a price" if unpriced else "all priced")
    assert card(chromium, "estimated_cost").startswith("CNY ") and ", USD " in card(
        chromium, "estimated_cost"
    )


def test_a_window_where_every_request_failed_draws_no_empty_usage_charts(
    chromium, warehouse, tmp_path
):
    db_path = tmp_path / "failed.duckdb"
    shutil.copy(warehouse, db_path)
    with duckdb.connect(str(db_path)) as con:
        con.execute(
            "update siliconflow.batch_requests set model = null, prompt_tokens = null, "
            "completion_tokens = null, total_tokens = null, status_code = 500, "
            "error_code = 'server_error'"
        )
    page = tmp_path / "failed.html"
    assert cli.main(["report", "--db", str(db_path), "--html", str(page)]) == 0

    show(chromium, page, LAPTOP)

    charts = [i.get_attribute("data-chart") for i in chromium.find_elements(By.CSS_SELECTOR, "img")]
    assert charts == ["turnaround", "daily_turnaround", "throughput", "statuses"]
    table = rows(chromium, "usage")
    assert table and all(row[3] == row[4] and row[5:] == ["-", "-", "-"] for row in table), table


def test_a_batch_without_a_status_shows_as_such_on_the_page_and_in_the_report(
    chromium, warehouse, tmp_path
):
    db_path = tmp_path / "no-status.duckdb"
    shutil.copy(warehouse, db_path)
    with duckdb.connect(str(db_path)) as con:
        ((batch_id,),) = con.execute(
            "select id from siliconflow.batches order by created_at desc limit 1"
        ).fetchall()
        con.execute("update siliconflow.batches set status = null where id = ?", [batch_id])
    page = tmp_path / "no-status.html"

    assert cli.main(["report", "--db", str(db_path), "--html", str(page)]) == 0
    text = run_process("report", "--db", str(db_path))

    show(chromium, page, LAPTOP)
    caption = chromium.find_element(By.CSS_SELECTOR, '[data-chart="statuses"] + figcaption')
    assert "(no status) 1" in caption.text
    assert [batch_id, "(no status)"] in [row[:2] for row in rows(chromium, "open")]
    assert text.code == 0 and "(no status) 1" in text.out and "None" not in text.out


def test_a_price_in_no_currency_prices_nothing(warehouse, tmp_path):
    db_path = tmp_path / "no-currency.duckdb"
    shutil.copy(warehouse, db_path)
    start, end = window()
    with duckdb.connect(str(db_path)) as con:
        ((batch_id,),) = con.execute(
            "select usage.batch_id from analytics.batch_usage as usage "
            "join analytics.batch_turnaround as t using (batch_id) "
            "where usage.estimated_cost is not null "
            "and cast(timezone('UTC', t.ended_at) as date) between ? and ? limit 1",
            [start, end],
        ).fetchall()
        con.execute(
            "update siliconflow.batch_requests set model = 'test/no-currency' "
            "where batch_id = ? and model is not null",
            [batch_id],
        )
        con.execute(  # a row whose currency was left blank
            "insert into analytics.seed_model_prices (model, input_per_million, "
            "output_per_million, currency, source, as_of) "
            "values ('test/no-currency', '1', '2', ' ', 'a test', '2026-01-01')"
        )
        priced = con.execute(
            "select count(*) from analytics.model_prices where model = 'test/no-currency'"
        ).fetchall()
    page = tmp_path / "no-currency.html"

    assert cli.main(["report", "--db", str(db_path), "--html", str(page)]) == 0
    text = run_process("report", "--db", str(db_path))

    assert priced == [(0,)]
    assert text.code == 0 and "None" not in text.out
    assert "models without a price" in text.out


def test_many_models_get_a_colour_each_and_the_rest_one_band_alike_on_every_chart(
    warehouse, tmp_path
):
    db_path = tmp_path / "models.duckdb"
    shutil.copy(warehouse, db_path)
    with duckdb.connect(str(db_path)) as con:  # twelve models, by batch
        con.execute(
            "update siliconflow.batch_requests "
            "set model = 'deepseek-ai/DeepSeek-V3' || (hash(batch_id) % 12)::varchar "
            "where model is not null"
        )
        con.execute(
            "insert into analytics.seed_model_prices (model, input_per_million, "
            "output_per_million, currency, source, as_of) "
            "select 'deepseek-ai/DeepSeek-V3' || n::varchar, '1', '2', 'CNY', 'a test', "
            "'2026-01-01' from range(12) as t(n)"
        )
    start, end = window()
    ((models,),) = query(
        db_path,
        "select count(distinct coalesce(model, '?')) from analytics.daily_usage "
        "where usage_date between ? and ?",
        [start, end],
    )
    assert models > len(charts.COLOURS)
    drawn = page_figures(db_path)

    colour_of = {}
    for name in ("tokens", "cost"):
        legend = drawn[name].legends[0]
        bands = [
            (text.get_text(), tuple(handle.get_facecolor()))
            for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
            if text.get_text() != charts.PARTIAL_LABEL
        ]
        labels, colours = [label for label, _ in bands], [colour for _, colour in bands]
        assert len(labels) <= len(charts.COLOURS) and len(set(colours)) == len(colours), name
        assert labels[-1] == f"{models - len(charts.COLOURS) + 1} other models", name
        for label, colour in zip(labels, colours, strict=True):
            assert colour_of.setdefault(label, colour) == colour, (name, label)


def test_the_cost_chart_says_models_without_a_price_are_left_out(chromium, page):
    show(chromium, page, LAPTOP)

    caption = chromium.find_element(By.CSS_SELECTOR, '[data-chart="cost"] + figcaption').text
    assert caption.endswith("; models without a price are left out")
