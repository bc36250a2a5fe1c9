"""The built wheel, installed into a fresh virtual environment, is one ``stagecoach`` package
that runs ``stagecoach up`` with nothing from the checkout.

The wheel is built from the repository (``pip wheel``) and installed with ``--no-deps``
into a new venv. Its third-party dependencies come from the test venv's site-packages,
added by a ``.pth`` line: that directory's own ``.pth`` files (the editable install of the
checkout) are not processed, so ``stagecoach`` can only come from the wheel. The process
runs from an empty directory, so the checkout is not on ``sys.path`` either.
"""

from __future__ import annotations

import json
import os
import re
import signal
import site
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, build_wheel, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = build_wheel(ROOT, out)
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel; returns its ``bin`` directory."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "test-dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home / "bin"


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"stagecoach"}
    # What `stagecoach up` reads at start: page copy, migrations, dashboard pages, content.
    assert "stagecoach/content/_layouts/pages/consent.zh-CN.j2" in names
    assert "stagecoach/content/_layouts/pages/preferences.en.html.j2" in names
    assert "stagecoach/engine/services/storage/migrations/env.py" in names
    assert "stagecoach/engine/dashboard/templates/base.html" in names
    assert "stagecoach/py.typed" in names
    # The example projects, which `up` runs when no project names its own.
    assert "stagecoach/examples/lifecycle/lifecycle/definitions.py" in names
    assert "stagecoach/examples/b2b_funnel/pyproject.toml" in names


def test_the_installed_package_comes_from_the_wheel_alone(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json, stagecoach, stagecoach.engine.app; "
        "print(json.dumps({'file': stagecoach.__file__, 'version': stagecoach.__version__, "
        "'folders': [n for n in ('engine', 'workflows', 'connectors') "
        "if importlib.util.find_spec(n) is not None]}))"
    )
    result = subprocess.run(
        [str(installed / "python"), "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert found["file"].startswith(str(installed.parent)), found
    assert found["folders"] == [], "the folders must install under stagecoach, not top-level"


def test_stagecoach_up_runs_from_the_wheel(
    installed: Path, tmp_path: Path, temporal_cli_path: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.pop("PYTHONPATH", None)
    api_port = free_port()
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        STAGECOACH_TEMPORAL_UI_PORT=str(free_port()),
        STAGECOACH_API_PORT=str(api_port),
        STAGECOACH_WORKER_METRICS_PORT=str(free_port()),
        STAGECOACH_TEMPORAL_METRICS_PORT=str(free_port()),
        STAGECOACH_ADMIN_TOKEN="wheel-admin-token-0123456789abcdef",
        TEMPORAL_CLI_PATH=temporal_cli_path,
        PATH=f"{installed}{os.pathsep}{env.get('PATH', '')}",
    )
    proc = subprocess.Popen(
        [str(installed / "stagecoach"), "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"stagecoach up exited early ({proc.wait()}): {''.join(lines)}")
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        else:
            pytest.fail("no ready banner in time:\n" + "".join(lines))
        health = httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=10).json()
        assert health["status"] == "ok", health
        page = httpx.get(f"http://127.0.0.1:{api_port}/dashboard/login", timeout=10)
        assert page.status_code == 200, page.text[:500]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, "".join(lines[-40:])


def test_a_team_starts_its_own_project_from_the_wheel(
    installed: Path, tmp_path: Path, test_server_path: str
) -> None:
    """``init``, ``validate`` and the project's own tests, outside the checkout, with the
    project template and the starter content coming from the wheel."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.pop("PYTHONPATH", None)
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        # The project's stagecoach.testing test runs on the Temporal test server.
        STAGECOACH_TEST_SERVER_PATH=test_server_path,
    )

    def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)

    made = run(tmp_path, str(installed / "stagecoach"), "init", "acme-marketing", "--no-git")
    assert made.returncode == 0, made.stderr
    root = tmp_path / "acme-marketing"
    checked = run(root, str(installed / "stagecoach"), "validate")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 journeys valid" in checked.stdout
    tests = run(root, str(installed / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "3 passed" in tests.stdout


def test_a_team_project_from_the_wheel_runs_deploys_delivers_and_rolls_back(
    installed: Path, tmp_path: Path, temporal_cli_path: str, test_server_path: str
) -> None:
    """The issue's tour, outside the checkout, from the wheel: init, validate, the team's
    tests, up on THEIR definitions, a contact whose whitepaper reaches the file sink,
    a deploy of a changed journey, and a rollback that plan shows first."""
    stagecoach = str(installed / "stagecoach")
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.pop("PYTHONPATH", None)
    data = tmp_path / "acme-marketing" / ".stagecoach"
    env.update(
        STAGECOACH_DATA_DIR=str(data),
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        STAGECOACH_TEMPORAL_UI_PORT=str(free_port()),
        STAGECOACH_API_PORT=str(api_port),
        STAGECOACH_WORKER_METRICS_PORT=str(free_port()),
        STAGECOACH_TEMPORAL_METRICS_PORT=str(free_port()),
        STAGECOACH_ADMIN_TOKEN="wheel-admin-token-0123456789abcdef",
        # Quiet hours off: the whitepaper goes out whatever the hour of the test.
        STAGECOACH_QUIET_HOURS_START="00:00",
        STAGECOACH_QUIET_HOURS_END="00:00",
        TEMPORAL_CLI_PATH=temporal_cli_path,
        STAGECOACH_TEST_SERVER_PATH=test_server_path,
    )

    def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)

    assert run(tmp_path, stagecoach, "init", "acme-marketing", "--no-git").returncode == 0
    root = tmp_path / "acme-marketing"
    assert run(root, stagecoach, "validate").returncode == 0
    tests = run(root, str(installed / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert tests.returncode == 0, tests.stdout[-3000:]

    proc = subprocess.Popen(
        [stagecoach, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=root,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"up exited early ({proc.wait()}): {''.join(lines)}")
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        banner = "".join(lines)
        assert "Definitions        acme-marketing  (acme_marketing.definitions:defs" in banner

        key = run(root, stagecoach, "keys", "create", "website").stdout.strip()
        call = {
            "userId": "team-e2e",
            "messageId": "team-e2e-download",
            "event": "content.downloaded",
            "properties": {"content_id": "wp-digital-transformation", "kind": "whitepaper"},
            "context": {"traits": {"email": "buyer@example.com", "locale": "en"}},
        }
        sent = httpx.post(f"http://127.0.0.1:{api_port}/v1/track", json=call, auth=(key, ""))
        assert sent.status_code == 200, sent.text
        sink = data / "sink"
        deadline = time.monotonic() + 60
        delivered: list[str] = []
        while time.monotonic() < deadline and not delivered:
            delivered = [
                p.read_text(encoding="utf-8")
                for p in sink.rglob("*.json")
                if "wp-digital-transformation" in p.read_text(encoding="utf-8")
            ]
            time.sleep(0.5)
        assert delivered, f"no whitepaper in {sink}: {sorted(sink.rglob('*'))}"
        assert "buyer@example.com" in delivered[0]

        welcome = root / "acme_marketing" / "journeys" / "welcome.py"
        original = welcome.read_text()
        welcome.write_text(original.replace("timedelta(days=3)", "timedelta(days=2)"))
        deployed = run(root, stagecoach, "deploy", "--to", "local")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert re.search(r"^created +welcome ", deployed.stdout, re.M), deployed.stdout

        welcome.write_text(original)  # back to the first version, on purpose this time
        planned = run(root, stagecoach, "plan")  # exit 0: publishing would change nothing
        assert planned.returncode == 0, planned.stdout + planned.stderr
        assert re.search(r"^older +welcome .*journeys rollback welcome", planned.stdout, re.M)
        rolled = run(root, stagecoach, "journeys", "rollback", "welcome")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        assert "rolled back welcome" in rolled.stdout
        settled = run(root, stagecoach, "plan")
        assert settled.returncode == 0, settled.stdout + settled.stderr
        assert re.search(r"^unchanged +welcome ", settled.stdout, re.M), settled.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
