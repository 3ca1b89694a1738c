"""Fixtures for the annotation app tests.

Database backends: every test that takes ``db_url`` runs on SQLite; it also runs on PostgreSQL when
``POSTTRAIN_TEST_PG_URL`` is set, either to a server URL (``postgresql+psycopg://user@host:port/db``;
each test gets a fresh database created next to it) or to ``auto``, which starts a throwaway cluster
under /tmp with the Debian ``postgresql`` binaries (as the ``postgres`` user when run as root;
missing binaries then fail the tests, they do not skip: ``.ci/run`` sets ``auto``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"

TASKS = [
    {"id": "t1", "prompt": "Name a primary colour.", "completions": ["Red.", "Purple, probably."]},
    {
        "id": "t2",
        "prompt": "Give a synonym for 'fast'.",
        "completions": ["Quick.", "Slow.", "Rapid."],
    },
    {"id": "g1", "prompt": "What is 2 + 2?", "completions": ["4", "5"], "gold": "A > B"},
    {
        "id": "t3",
        "prompt": [{"role": "user", "content": "Say hello politely."}],
        "completions": ["Hello! How can I help?", "What do you want."],
    },
]


def write_tasks(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _start_cluster():
    """initdb + pg_ctl start under a temporary directory; returns (url, stop)."""
    bindir = _pg_bin()
    if bindir is None:  # asked for, so a missing server fails (CI must not skip these silently)
        pytest.fail(
            "POSTTRAIN_TEST_PG_URL=auto but no PostgreSQL binaries (bash scripts/install_postgres.sh)"
        )
    root = Path(tempfile.mkdtemp(prefix="posttrain-pg-"))
    data = root / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def stop():
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="session")
def pg_server():
    setting = os.environ.get("POSTTRAIN_TEST_PG_URL", "")
    if not setting:
        pytest.skip("PostgreSQL run not requested (set POSTTRAIN_TEST_PG_URL=auto or to a URL)")
    if setting == "auto":
        url, stop = _start_cluster()
        yield url
        stop()
    else:
        yield setting


@pytest.fixture
def pg_database(pg_server):
    """A fresh, empty database on the PostgreSQL server; dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(pg_server)
    name = "pt_" + uuid.uuid4().hex[:12]
    conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'annotate.db'}"
    return request.getfixturevalue("pg_database")


# ---------------------------------------------------------------------------------------------
# an app with accounts and assignments


@dataclass
class Setup:
    url: str
    engine: object
    tasks_path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def build_setup(url: str, tasks_path: Path, rows=TASKS, annotators=("alice", "bob"), overlap=2):
    from posttrain.annotate import auth, service
    from posttrain.annotate.db import ROLE_ADMIN, make_engine, session
    from posttrain.annotate.tasks import read_tasks

    write_tasks(tasks_path, rows)
    engine = make_engine(url)
    setup = Setup(url, engine, tasks_path)
    with session(engine) as db:
        service.load_tasks(db, read_tasks(tasks_path))
        setup.tokens["admin"] = auth.create_account(db, "admin", ROLE_ADMIN)
        for name in annotators:
            setup.tokens[name] = auth.create_account(db, name)
        service.assign(db, overlap=overlap, seed=1)
        db.commit()
    return setup


@pytest.fixture
def setup(db_url, tmp_path):
    made = build_setup(db_url, tmp_path / "tasks.jsonl")
    yield made
    made.engine.dispose()


@pytest.fixture
def sqlite_setup(tmp_path):
    """Like ``setup`` but SQLite only (browser tests: the backend does not matter there)."""
    made = build_setup(f"sqlite:///{tmp_path / 'annotate.db'}", tmp_path / "tasks.jsonl")
    yield made
    made.engine.dispose()


@pytest.fixture
def client(setup):
    from fastapi.testclient import TestClient

    from posttrain.annotate.server import create_app

    with TestClient(create_app(setup.engine)) as test_client:
        yield test_client


# ---------------------------------------------------------------------------------------------
# a real server process


class ServerProcess:
    """``python -m posttrain.annotate serve`` on 127.0.0.1; can be killed and started again."""

    def __init__(self, db_url: str, port: int, log: Path, tasks: Path | None = None):
        self.db_url, self.port, self.log, self.tasks = db_url, port, log, tasks
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "posttrain.annotate",
            "serve",
            "--db",
            self.db_url,
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
        ]
        if self.tasks is not None:
            cmd += ["--tasks", str(self.tasks)]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start in time")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def live_server(sqlite_setup, tmp_path):
    server = ServerProcess(sqlite_setup.url, free_port(), tmp_path / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium_browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing; run scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium_browser):
    context = chromium_browser.new_context(
        viewport={"width": 1280, "height": 860}, accept_downloads=True
    )
    page = context.new_page()
    yield page
    context.close()
