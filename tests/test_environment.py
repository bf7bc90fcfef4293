"""Odd environments: keys pasted with stray characters, folders named like SQL or globs, files
that are not ours, folders nobody may write, closed pipes. Each gets its exit code and one line
saying what to do; nothing of the user's is overwritten and the key is written nowhere."""

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import REPO, run_process
from truth import assert_warehouse_equals, served

from pipelines import cli
from pipelines.simulator import Simulator

CANARY = "sk-canary-7c1f0e9d5b"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(*folders: Path) -> list[Path]:
    return [path for folder in folders for path in folder.rglob("*") if path.is_file()]


# --- 7. the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pasted", ["  {key}  ", "{key}\r\n", "\t{key}\n"])
def test_a_key_with_surrounding_whitespace_or_a_windows_line_end_works(
    simulator, db_path, run, monkeypatch, pasted
):
    monkeypatch.setenv("SILICONFLOW_API_KEY", pasted.format(key=simulator.api_key))

    assert run("sync", "--db", str(db_path), "--no-models").code == 0

    assert {r.authorization for r in simulator.requests} == {f"Bearer {simulator.api_key}"}


@pytest.mark.parametrize("bad", ["sk-abc def", "sk-abc\r\ndef", "sk-\u201cquoted\u201d"])
def test_a_key_that_cannot_go_into_a_header_exits_2_without_showing_it(simulator, db_path, bad):
    outcome = run_process("sync", "--db", str(db_path), env={"SILICONFLOW_API_KEY": bad})

    assert outcome.code == 2 and outcome.err.count("\n") == 1
    assert "HTTP header" in outcome.err and "SILICONFLOW_API_KEY" in outcome.err
    assert bad.strip() not in outcome.err and simulator.count() == 0


def sync_with_canary(sim: Simulator, db_path: Path, folder: Path, *args: str, **env: str):
    """A real sync, its key only in `folder`/.dlt/secrets.toml, dlt's files under `folder`."""
    env = {
        "HOME": str(folder),
        "XDG_CACHE_HOME": str(folder / "cache"),
        "SOURCES__SILICONFLOW__BASE_URL": sim.base_url,
        "SILICONFLOW_API_KEY": "",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "sync", "--db", str(db_path), "--verbose", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=folder,
        timeout=120,
    )


FAULTS = ({"status": 500, "times": 50}, {"kind": "malformed"}, {"status": 401})
# Error answers that quote the key they were sent, as a message, a plain text, a header.
QUOTING_THE_KEY = (
    {"status": 401, "body": f"Invalid token: Bearer {CANARY}"},
    {"status": 400, "body": {"code": 20012, "message": f"bad key {CANARY}", "data": None}},
    {"status": 429, "retry_after": 3600, "body": {"message": f"{CANARY} waits"}},
)


def test_the_key_is_written_nowhere_after_good_and_failed_syncs(tmp_path, world):
    project = tmp_path / "project"
    (project / ".dlt").mkdir(parents=True)
    (project / ".dlt" / "secrets.toml").write_text(f'[sources.siliconflow]\napi_key = "{CANARY}"\n')
    db_path = tmp_path / "data" / "secret.duckdb"
    outcomes = []
    with Simulator(world, api_key=CANARY) as sim:
        outcomes.append(sync_with_canary(sim, db_path, project))
        for fault in (*FAULTS, *QUOTING_THE_KEY):
            sim.faults.queue(**fault)
            outcomes.append(sync_with_canary(sim, db_path, project, "--full-refresh"))
            sim.faults.reset()
        sim.faults.latency_ms = 200
        outcomes.append(
            sync_with_canary(
                sim, db_path, project, "--full-refresh", SOURCES__SILICONFLOW__SYNC_TIMEOUT="1"
            )
        )
        sim.faults.latency_ms = 0
        # A storage error that quotes the key, for each result file: stored in batch_files.
        sim.faults.queue(status=500, files=True, times=100_000, body=f"no {CANARY} here")
        outcomes.append(
            sync_with_canary(sim, db_path, project, SOURCES__SILICONFLOW__RESULTS="true")
        )

    assert [o.returncode for o in outcomes] == [0, 4, 4, 3, 3, 4, 4, 4, 0]
    assert "secrets.toml" in outcomes[3].stderr, "a 401 names where the key came from"
    assert all("***" in outcome.stderr for outcome in [*outcomes[4:7], outcomes[-1]])
    for outcome in outcomes:
        assert CANARY not in outcome.stdout + outcome.stderr
    written = files_under(tmp_path)
    assert any(p.name == "trace.pickle" for p in written), "dlt's working folder was looked at"
    for path in written:
        if path.name != "secrets.toml":
            assert CANARY.encode() not in path.read_bytes(), path
    with duckdb.connect(str(db_path), read_only=True) as con:
        for schema, table in con.execute(
            "select table_schema, table_name from information_schema.tables"
        ).fetchall():
            assert CANARY not in repr(con.execute(f'from "{schema}"."{table}"').fetchall())


def test_the_environment_beats_secrets_toml_for_both_key_variables(simulator, tmp_path):
    (tmp_path / ".dlt").mkdir()
    (tmp_path / ".dlt" / "secrets.toml").write_text(
        '[sources.siliconflow]\napi_key = "sk-wrong-from-toml"\n'
    )
    for variable in ("SILICONFLOW_API_KEY", "SOURCES__SILICONFLOW__API_KEY"):
        env = {**os.environ, "SILICONFLOW_API_KEY": "", variable: simulator.api_key}
        done = subprocess.run(
            [sys.executable, "-m", "pipelines", "sync", "--db", str(tmp_path / "w.duckdb")],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (variable, done.stderr)


# --- 8. paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folder", ["it's", 'say "hi"', "k=v", "50%d", "why?", "[ab]", "a b", "{curly}", "st*r"]
)
def test_a_database_folder_with_special_characters_works_like_any_other(
    simulator, tmp_path, run, folder
):
    db_path = tmp_path / folder / "w.duckdb"
    db_path.parent.mkdir()

    assert run("sync", "--db", str(db_path)).code == 0
    simulator.world.advance(3600)
    assert run("sync", "--db", str(db_path)).code == 0

    assert_warehouse_equals(db_path, served(simulator))
    outcome = run("report", "--db", str(db_path))
    assert outcome.code == 0 and "Created" in outcome.out


# --- 9. every foreseeable failure: its exit code and one line ------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"name,total\nbatch,3\n", b"", b"SQLite format 3\x00" + bytes(200)],
    ids=["csv", "empty", "sqlite"],
)
@pytest.mark.parametrize("command", ["sync", "models", "report"])
def test_a_db_that_is_not_duckdb_exits_2_and_is_left_exactly_as_it_was(
    simulator, tmp_path, command, content
):
    db_path = tmp_path / "notes.duckdb"
    db_path.write_bytes(content)
    before = digest(db_path)

    outcome = run_process(command, "--db", str(db_path))

    assert outcome.code == 2 and outcome.err.count("\n") == 1
    assert "not a DuckDB database" in outcome.err or "empty" in outcome.err
    assert digest(db_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.duckdb"]


# Root may write anywhere; without these capabilities it meets file permissions like anyone.
AS_ROOT_WITHOUT_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")


def run_unprivileged(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `sfbatches ARGS` so that file permissions apply, even when the tests run as root."""
    prefix = [*AS_ROOT_WITHOUT_OVERRIDE, "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "pipelines", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "HOME": str(cwd), "XDG_CACHE_HOME": str(cwd / "cache")},
    )


@pytest.fixture
def open_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    return folder


def test_a_folder_nobody_may_write_exits_2(simulator, open_folder):
    locked = open_folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)

    done = run_unprivileged("sync", "--db", str(locked / "w.duckdb"), cwd=open_folder)

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot write" in done.stderr and "unexpected" not in done.stderr


def test_a_lock_file_nobody_may_write_exits_2(simulator, open_folder):
    (open_folder / "w.duckdb.lock").write_text("")
    (open_folder / "w.duckdb.lock").chmod(0o444)

    done = run_unprivileged("sync", "--db", str(open_folder / "w.duckdb"), cwd=open_folder)

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "w.duckdb.lock" in done.stderr and "unexpected" not in done.stderr


def test_models_on_a_read_only_database_exits_2(simulator, open_folder, run):
    db_path = open_folder / "w.duckdb"
    assert run("sync", "--db", str(db_path), "--no-models").code == 0
    db_path.chmod(0o444)

    done = run_unprivileged("models", "--db", str(db_path), cwd=open_folder)

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot write" in done.stderr and "unexpected" not in done.stderr
    report = run_unprivileged("report", "--db", str(db_path), cwd=open_folder)
    assert report.returncode == 2 and "sfbatches models" in report.stderr, report.stderr


@pytest.mark.parametrize("below", [False, True], ids=["a file", "a path below a file"])
def test_an_archive_dir_that_is_a_file_exits_2_and_leaves_the_file_alone(
    simulator, tmp_path, db_path, below
):
    theirs = tmp_path / "notes.txt"
    theirs.write_text("not ours")
    archive = theirs / "archive" if below else theirs

    outcome = run_process(
        "sync", "--db", str(db_path), env={"SOURCES__SILICONFLOW__ARCHIVE_DIR": str(archive)}
    )

    assert outcome.code == 2 and outcome.err.count("\n") == 1, outcome.err
    assert "archive_dir" in outcome.err and "unexpected" not in outcome.err
    assert theirs.read_text() == "not ours" and not db_path.exists()


def test_an_archive_dir_nobody_may_make_exits_2(simulator, open_folder, monkeypatch):
    locked = open_folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    monkeypatch.setenv("SOURCES__SILICONFLOW__ARCHIVE_DIR", str(locked / "archive"))

    done = run_unprivileged("sync", "--db", str(open_folder / "w.duckdb"), cwd=open_folder)

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot make the folder" in done.stderr and "Permission denied" in done.stderr
    assert not (locked / "archive").exists() and not (open_folder / "w.duckdb").exists()


def test_an_archive_dir_nobody_may_write_in_exits_2(simulator, open_folder, monkeypatch):
    archive = open_folder / "archive"
    archive.mkdir()
    archive.chmod(0o555)
    monkeypatch.setenv("SOURCES__SILICONFLOW__ARCHIVE_DIR", str(archive))

    done = run_unprivileged("sync", "--db", str(open_folder / "w.duckdb"), cwd=open_folder)

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot write in the folder {archive}" in done.stderr
    assert not (open_folder / "w.duckdb").exists()


@pytest.mark.parametrize("command", ["models", "sync"])
def test_a_database_one_may_write_in_a_folder_one_may_not_exits_2(
    simulator, open_folder, run, command
):
    locked = open_folder / "locked"
    locked.mkdir()
    assert run("sync", "--db", str(locked / "w.duckdb"), "--no-models").code == 0
    for path in locked.iterdir():
        path.chmod(0o666)
    locked.chmod(0o555)
    before = hashlib.sha256((locked / "w.duckdb").read_bytes()).hexdigest()

    done = run_unprivileged(command, "--db", str(locked / "w.duckdb"), cwd=open_folder)

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot write {locked / 'w.duckdb.wal'} (Permission denied)" in done.stderr
    assert hashlib.sha256((locked / "w.duckdb").read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    "named", [":memory:", "md:warehouse", "s3://bucket/w.duckdb", "https://host/w.duckdb"]
)
@pytest.mark.parametrize("command", ["sync", "models", "report", "check"])
def test_a_database_that_is_no_local_file_exits_2_and_makes_nothing(
    simulator, tmp_path, monkeypatch, run, named, command
):
    monkeypatch.chdir(tmp_path)

    outcome = run(command, "--db", named)

    assert outcome.code == 2 and f"{named} is not a file on this machine" in outcome.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("named", ["sqlite:w.duckdb", "hf:w.duckdb", "ducklake:w.duckdb"])
def test_a_file_named_like_a_kind_of_database_is_a_local_file_like_any_other(
    simulator, tmp_path, monkeypatch, run, named
):
    # DuckDB reads `sqlite:` and the like at the start of a name it attaches as the kind of
    # database, and would download an extension for it
    monkeypatch.chdir(tmp_path)

    assert run("sync", "--db", named).code == 0
    outcome = run("report", "--db", named)

    assert outcome.code == 0 and "Created" in outcome.out
    assert_warehouse_equals(tmp_path / named, served(simulator))
    assert sorted(path.name for path in tmp_path.iterdir()) == [named, f"{named}.lock"]


@pytest.mark.parametrize("kind", ["loop", "not-utf-8", "backslash"])
@pytest.mark.parametrize("command", ["sync", "check", "demo"])
def test_a_path_duckdb_cannot_be_given_exits_2_saying_why(tmp_path, monkeypatch, kind, command):
    monkeypatch.chdir(tmp_path)
    if kind == "loop":
        named, said = "loop.duckdb", "is a loop of symbolic links"
        os.symlink(named, named)
    elif kind == "backslash":  # a folder `back` exists: DuckDB would write in it
        named, said = "back\\slash.duckdb", "reads the backslash in it as a folder separator"
        (tmp_path / "back").mkdir()
    else:
        named, said = os.fsdecode(b"caf\xe9.duckdb"), "the name is not valid UTF-8"
    before = sorted(tmp_path.rglob("*"))

    done = subprocess.run(
        [sys.executable, "-m", "pipelines", command, "--db", named],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SILICONFLOW_API_KEY": "sk-test",
            "SOURCES__SILICONFLOW__BASE_URL": "http://127.0.0.1:9/v1",  # nothing answers
        },
    )

    assert done.returncode == 2, done.stderr
    assert said in done.stderr and done.stderr.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before


def cut_short(data: bytes) -> bytes:
    return data[: 300 << 10]


def scribbled(data: bytes) -> bytes:
    """64 bytes changed in DuckDB's first block (after its three 4 KB headers)."""
    start = (12 + 4) << 10
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :]


@pytest.mark.parametrize("damage", [cut_short, scribbled], ids=["cut-short", "scribbled"])
@pytest.mark.parametrize("command", ["sync", "check", "report"])
def test_a_damaged_database_exits_2_saying_what_to_do_and_is_left_alone(
    simulator, db_path, run, damage, command
):
    assert run("sync", "--db", str(db_path)).code == 0
    db_path.write_bytes(damage(db_path.read_bytes()))
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()

    outcome = run(command, "--db", str(db_path))

    assert outcome.code == 2 and outcome.err.count("\n") == 1, outcome.err
    assert "damaged" in outcome.err and "move it aside and run `sfbatches sync`" in outcome.err
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before


def test_a_home_folder_in_sfbatches_db_is_the_home_folder(simulator, tmp_path, monkeypatch, run):
    # a crontab line does not expand `~`: SFBATCHES_DB=~/w.duckdb reaches sfbatches as it is
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SFBATCHES_DB", "~/w.duckdb")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()

    assert run("sync", "--no-models").code == 0
    assert run("check").code in (0, 6)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    assert (tmp_path / "home" / "w.duckdb").is_file()


def test_a_blank_sfbatches_db_counts_as_unset(tmp_path, monkeypatch, run):
    monkeypatch.setenv("SFBATCHES_DB", "  ")
    monkeypatch.chdir(tmp_path)

    outcome = run("check")

    assert outcome.code == 2 and "siliconflow.duckdb" in outcome.err
    assert list(tmp_path.iterdir()) == []


def test_a_link_to_a_database_not_made_yet_gets_it_where_it_points(simulator, tmp_path, run):
    link = tmp_path / "link.duckdb"
    link.symlink_to(tmp_path / "data" / "w.duckdb")
    (tmp_path / "data").mkdir()

    assert run("sync", "--db", str(link), "--no-models").code == 0

    assert link.is_symlink() and (tmp_path / "data" / "w.duckdb").is_file()
    assert_warehouse_equals(tmp_path / "data" / "w.duckdb", served(simulator))


@pytest.mark.parametrize("command", ["sync", "models", "report", "check", "demo"])
def test_an_empty_db_option_exits_2_and_touches_no_default_file(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--db", " "])

    assert exited.value.code == 2 and list(tmp_path.iterdir()) == []


def run_in_project(tmp_path: Path, command: str, files: dict[str, str]):
    """`sfbatches COMMAND --db w.duckdb` as a process in `tmp_path`, its .dlt holding `files`."""
    (tmp_path / ".dlt").mkdir()
    for name, text in files.items():
        (tmp_path / ".dlt" / name).write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "pipelines", command, "--db", str(tmp_path / "w.duckdb")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize(
    ("name", "text", "command"),
    [
        ("config.toml", "[alerts]\nmax_queue_hours = \n", "check"),
        ("secrets.toml", '[sources.siliconflow]\napi_key = "sk-cut\n', "sync"),
    ],
)
def test_a_toml_file_dlt_cannot_read_exits_2_naming_it(simulator, tmp_path, name, text, command):
    done = run_in_project(tmp_path, command, {name: text})

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{name} is not valid TOML" in done.stderr and "line 2" in done.stderr
    assert "sk-cut" not in done.stderr and "unexpected" not in done.stderr
    # the file to fix, and no place dlt looked in vain
    assert done.stderr.endswith(f": fix it in ./.dlt/{name}\n")


@pytest.mark.parametrize(("name", "command"), [("secrets.toml", "sync"), ("config.toml", "check")])
def test_a_toml_file_one_may_not_read_exits_2_saying_so_not_that_it_is_invalid(
    tmp_path, name, command
):
    (tmp_path / ".dlt").mkdir()
    (tmp_path / ".dlt" / name).write_text("[alerts]\nmax_queue_hours = 5\n")
    # as root every file is readable: the refusal another user meets is played by open(), in a
    # process of its own (dlt reads .dlt/ once per process)
    refusing = f"""
import builtins, errno, os, sys
real_open = builtins.open
def refusing_open(file, *args, **kwargs):
    if str(file).endswith({str(Path(".dlt") / name)!r}):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
    return real_open(file, *args, **kwargs)
builtins.open = refusing_open
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""

    done = subprocess.run(
        [sys.executable, "-c", refusing, command, "--db", str(tmp_path / "w.duckdb")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot read {name} (Permission denied): let the user who runs sfbatches" in done.stderr
    assert done.stderr.endswith(f"read it, in ./.dlt/{name}\n")
    assert "not valid TOML" not in done.stderr


@pytest.mark.parametrize(
    ("text", "command", "said"),
    [
        ('[runtime]\nrequest_timeout = "x"\n', "sync", "request_timeout must be of type float"),
        ('[runtime]\ndlthub_telemetry = "sometimes"\n', "check", "telemetry must be of type bool"),
    ],
)
def test_a_setting_of_the_wrong_type_in_config_toml_exits_2_naming_it(
    simulator, tmp_path, text, command, said
):
    duckdb.connect(str(tmp_path / "w.duckdb")).close()  # check reads settings once it has one

    done = run_in_project(tmp_path, command, {"config.toml": text})

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert said in done.stderr and "config.toml" in done.stderr


@pytest.mark.parametrize("section", ["[sources.siliconflow]", "[sources]\nsiliconflow.api_key"])
def test_a_key_in_config_toml_is_refused_pointing_at_secrets_toml(tmp_path, section):
    entry = section if "api_key" in section else f"{section}\napi_key"

    done = run_in_project(tmp_path, "sync", {"config.toml": f'{entry} = "sk-in-config-XYZ"\n'})

    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "in .dlt/config.toml" in done.stderr and ".dlt/secrets.toml" in done.stderr
    assert "sk-in-config" not in done.stderr + done.stdout
    assert not (tmp_path / "w.duckdb").exists()


def test_simulate_on_a_port_in_use_exits_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        outcome = run_process("simulate", "--port", str(port), "--batches", "10", timeout=30)

    assert outcome.code == 2 and outcome.err.count("\n") == 1
    assert f"port {port} is in use" in outcome.err


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_simulate_on_a_port_out_of_range_exits_2(port):
    outcome = run_process("simulate", "--port", port, timeout=30)

    assert outcome.code == 2 and "port number from 0 to 65535" in outcome.err


def test_a_closed_stdout_pipe_ends_quietly(simulator, db_path, run):
    assert run("sync", "--db", str(db_path)).code == 0
    reader = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writer = subprocess.run(
        [sys.executable, "-m", "pipelines", "report", "--db", str(db_path), "--days", "30"],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    reader.stdin.close()
    reader.wait()

    assert writer.returncode == 0 and writer.stderr == ""


@pytest.mark.parametrize(
    "url", ["api.siliconflow.cn/v1", "ftp://api.siliconflow.cn/v1", "https://"]
)
def test_a_base_url_that_is_not_a_web_address_exits_2(db_path, url):
    outcome = run_process(
        "sync", "--db", str(db_path),
        env={"SOURCES__SILICONFLOW__BASE_URL": url, "SILICONFLOW_API_KEY": "sk-x"},
    )  # fmt: skip

    assert outcome.code == 2 and outcome.err.count("\n") == 1
    assert "base_url must be a full URL" in outcome.err


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("SFBATCHES_LOCK_TIMEOUT", "soon", "SFBATCHES_LOCK_TIMEOUT must be a number of seconds"),
        ("SFBATCHES_LOCK_TIMEOUT", "-5", "SFBATCHES_LOCK_TIMEOUT must be a number of seconds"),
        ("RUNTIME__REQUEST_TIMEOUT", "0", "runtime.request_timeout must be a number of seconds"),
        ("RUNTIME__REQUEST_MAX_ATTEMPTS", "two", "setting request_max_attempts must be of type"),
        ("RUNTIME__REQUEST_TIMEOUT", "inf", "runtime.request_timeout must be a number of seconds"),
        ("RUNTIME__REQUEST_BACKOFF_FACTOR", "1e400", "request_backoff_factor must be a number"),
        ("RUNTIME__LOG_LEVEL", "BOGUS", "runtime.log_level must be one of DEBUG"),
        ("RUNTIME__LOG_LEVEL", "info", "runtime.log_level must be one of DEBUG"),
        ("SOURCES__SILICONFLOW__PAGE_SIZE", "1e3", "page_size must be a whole number"),
        ("SOURCES__SILICONFLOW__SYNC_TIMEOUT", "nan", "sync_timeout must be a number of seconds"),
        ("SOURCES__SILICONFLOW__SYNC_TIMEOUT", "inf", "sync_timeout must be a number of seconds"),
        ("SOURCES__SILICONFLOW__RESULTS", "maybe", "results must be true or false"),
    ],
)
def test_a_setting_out_of_its_range_exits_2_naming_it(simulator, db_path, name, value, said):
    outcome = run_process("sync", "--db", str(db_path), env={name: value})

    assert outcome.code == 2 and outcome.err.count("\n") == 1, outcome.err
    assert said in outcome.err and repr(value) in outcome.err
    assert not db_path.exists()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("created_at", 10**15, "created_at = 1000000000000000"),
        ("completed_at", 2**64, "completed_at"),
        ("request_counts", {"total": 2**70, "completed": 1, "failed": 0}, "request_counts.total"),
        ("completed_at", "1749023566", 'completed_at = "1749023566", not a unix timestamp'),
        ("expires_at", "2026-01-01T00:00:00Z", 'expires_at = "2026-01-01T00:00:00Z", not'),
    ],
    ids=[
        "time-beyond-year-9999",
        "time-beyond-64-bits",
        "count-beyond-64-bits",
        "time-as-text",
        "time-as-iso-text",
    ],
)
def test_a_value_out_of_range_exits_4_naming_the_batch_and_field(
    simulator, db_path, run, field, value, named
):
    target = simulator.world.visible()[150]["id"]
    simulator.faults.overrides = {target: {field: value}}

    outcome = run("sync", "--db", str(db_path), "--no-models")

    assert outcome.code == 4 and outcome.err.count("\n") == 1
    assert target in outcome.err and named in outcome.err
