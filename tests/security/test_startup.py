"""Promise: a Stagecoach process started as an operator starts it refuses credentials
anyone could know or guess, believes X-Forwarded-For only from the proxies it is told
of, and keeps contacts' personal data in files only its user can read.

Every test here starts the real command (``python -m stagecoach.engine.cli ...``) in a subprocess:

- ``stagecoach api`` bound beyond loopback with the published development link secret,
  or a short one, exits 2 with one line naming ``STAGECOACH_LINK_SECRET`` and the fix;
  an admin token under the minimum length stops it wherever it is bound.
- Failed admin tokens are throttled per client, and the client is the TCP peer: a
  guesser cannot reset its count by sending a new ``X-Forwarded-For`` each time, unless
  its peer address is listed in ``STAGECOACH_TRUSTED_PROXIES``.
- ``stagecoach up`` generates a random link secret on first start (``<data_dir>/link-
  secret``, 0600) and keeps it; a click token forged with the published default is
  refused by the running API; every file it leaves under the data directory (databases,
  logs, keys) is 0600.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from stagecoach.engine.domain.content import LinkSigner
from stagecoach.engine.services.analytics.store import AnalyticsStore
from stagecoach.engine.settings import DEV_LINK_SECRET, LINK_SECRET_FILE
from tests.helpers import free_port, migrated_engine

pytestmark = pytest.mark.e2e

STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]
ADMIN_TOKEN = "startup-test-admin-token-0123456789"
GOOD_SECRET = "startup-test-link-secret-0123456789abcdef"


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        STAGECOACH_API_PORT=str(free_port()),
        STAGECOACH_ADMIN_TOKEN=ADMIN_TOKEN,
        STAGECOACH_LOG_FORMAT="json",
    )
    env.update(values)
    return env


def _run(tmp_path: Path, *args: str, **values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STAGECOACH, *args],
        env=_env(tmp_path, **values),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("stagecoach: error:")]
    assert len(lines) == 1, result.stderr
    for needle in (*needles, "Fix:"):
        assert needle in lines[0], lines[0]
    return lines[0]


# --- credentials anyone could know --------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "problem"),
    [(None, "published development value"), ("short-secret-of-24-chars", "under 32")],
)
def test_the_api_will_not_serve_other_hosts_with_a_known_or_short_link_secret(
    tmp_path: Path, secret: str | None, problem: str
) -> None:
    values = {"STAGECOACH_API_HOST": "0.0.0.0"}  # noqa: S104 (the case under test)
    if secret is not None:
        values["STAGECOACH_LINK_SECRET"] = secret
    result = _run(tmp_path, "api", **values)
    line = _one_line_error(result, "STAGECOACH_LINK_SECRET", problem, values["STAGECOACH_API_HOST"])
    assert "openssl rand" in line
    assert "127.0.0.1" in line  # the development way out is named too


def test_an_admin_token_under_the_minimum_length_stops_the_api(tmp_path: Path) -> None:
    result = _run(tmp_path, "api", STAGECOACH_ADMIN_TOKEN="e2e-admin-token")
    _one_line_error(result, "STAGECOACH_ADMIN_TOKEN", "at least 24")


# --- a running API: throttling and the proxy headers --------------------------------------


@contextlib.contextmanager
def _serving(tmp_path: Path, **values: str) -> Iterator[str]:
    env = _env(tmp_path, STAGECOACH_LINK_SECRET=GOOD_SECRET, **values)
    db = migrated_engine(f"sqlite:///{tmp_path / '.stagecoach' / 'stagecoach.db'}")
    db.dispose()
    url = f"http://127.0.0.1:{env['STAGECOACH_API_PORT']}"
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [*STAGECOACH, "api"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 503):
                    break
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _guess(url: str, forwarded_for: str) -> int:
    response = httpx.get(
        f"{url}/v1/reports/funnel",
        headers={"Authorization": "Bearer wrong-guess", "X-Forwarded-For": forwarded_for},
        timeout=10,
    )
    return response.status_code


def test_a_guesser_cannot_dodge_the_throttle_with_x_forwarded_for(tmp_path: Path) -> None:
    with _serving(tmp_path, STAGECOACH_AUTH_FAILURE_LIMIT="3") as url:
        answers = [_guess(url, f"198.51.100.{n}") for n in range(1, 6)]
    assert answers == [401, 401, 401, 429, 429]


def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only(tmp_path: Path) -> None:
    """Behind a listed proxy each forwarded client has its own count."""
    with _serving(
        tmp_path, STAGECOACH_AUTH_FAILURE_LIMIT="3", STAGECOACH_TRUSTED_PROXIES="127.0.0.1"
    ) as url:
        spread = [_guess(url, f"198.51.100.{n}") for n in range(1, 6)]
        one = [_guess(url, "203.0.113.9") for _ in range(4)]
    assert spread == [401] * 5
    assert one == [401, 401, 401, 429]


def test_a_malformed_trusted_proxy_is_refused_naming_the_setting(tmp_path: Path) -> None:
    result = _run(tmp_path, "api", STAGECOACH_TRUSTED_PROXIES="10.0.0.0/8,proxy.internal")
    _one_line_error(result, "STAGECOACH_TRUSTED_PROXIES", "proxy.internal")


# --- files ----------------------------------------------------------------------------------


def _loose(root: Path) -> dict[str, str]:
    """Files under ``root`` that anyone but their owner can read or write, with modes."""
    found: dict[str, str] = {}
    for path in root.rglob("*"):
        mode = path.lstat().st_mode
        if path.is_file() and mode & (stat.S_IRWXG | stat.S_IRWXO):
            found[str(path.relative_to(root))] = oct(mode & 0o777)
    return found


def test_the_database_is_created_readable_by_its_user_only(tmp_path: Path) -> None:
    result = _run(tmp_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    data = tmp_path / ".stagecoach"
    assert stat.S_IMODE((data / "stagecoach.db").stat().st_mode) == 0o600
    assert _loose(data) == {}


def test_the_analytics_copy_is_created_readable_by_its_user_only(tmp_path: Path) -> None:
    """Through the Python API, in a process whose umask lets others read (0022)."""
    previous = os.umask(0o022)
    try:
        db = migrated_engine(f"sqlite:///{tmp_path / 'app.db'}")
        store = AnalyticsStore(tmp_path / "analytics.duckdb")
        store.sync(db)
        with store.read() as con:
            assert con.execute("SELECT count(*) FROM contacts").fetchone() == (0,)
        db.dispose()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "analytics.duckdb").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "app.db").stat().st_mode) == 0o600


def _wait_until_up(proc: subprocess.Popen[str], timeout: float = 150) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"stagecoach up exited early ({proc.wait()}): {''.join(lines)}")
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return
    pytest.fail("stagecoach up did not print its ready banner in time")


def test_up_keeps_its_own_random_link_secret_and_private_files(
    tmp_path: Path, temporal_cli_path: str
) -> None:
    env = _env(
        tmp_path,
        STAGECOACH_TEMPORAL_UI_PORT=str(free_port()),
        STAGECOACH_WORKER_METRICS_PORT=str(free_port()),
        STAGECOACH_TEMPORAL_METRICS_PORT=str(free_port()),
        TEMPORAL_CLI_PATH=temporal_cli_path,
    )
    data = tmp_path / ".stagecoach"
    url = f"http://127.0.0.1:{env['STAGECOACH_API_PORT']}"
    proc = subprocess.Popen(
        [*STAGECOACH, "up"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_until_up(proc)
        secret_file = data / LINK_SECRET_FILE
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 43
        assert secret != DEV_LINK_SECRET
        # A click token forged with the published default: no redirect anywhere.
        now = datetime.now(UTC)
        forger = LinkSigner(DEV_LINK_SECRET.encode(), url, timedelta(days=1))
        forged = forger.click_url(
            "https://evil.example/", contact_id="c_x", content_id="x", now=now
        )
        answer = httpx.get(forged, timeout=10, follow_redirects=False)
        assert answer.status_code == 403, answer.text
        assert "location" not in answer.headers
        # ... while a link signed with this install's secret is the one that works.
        ours = LinkSigner(secret.encode(), url, timedelta(days=1))
        good = ours.click_url("https://example.com/", contact_id="c_x", content_id="x", now=now)
        assert httpx.get(good, timeout=10, follow_redirects=False).status_code == 302
        # The dashboard's numbers make the analytics copy; sign in and ask for them.
        with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as browser:
            signed = browser.post("/dashboard/login", data={"token": ADMIN_TOKEN})
            assert signed.status_code == 200, signed.text
        deadline = time.monotonic() + 30
        while not (data / "analytics.duckdb").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    assert (data / "analytics.duckdb").exists()
    assert (data / "logs" / "api.log").stat().st_size > 0
    assert _loose(data) == {}
    with sa.create_engine(f"sqlite:///{data / 'stagecoach.db'}").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM admin_sessions")).scalar() == 1
