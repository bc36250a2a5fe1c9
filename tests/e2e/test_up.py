"""``stagecoach up`` as a new user runs it: a real subprocess, real ports, Ctrl-C."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from tests.helpers import free_port

pytestmark = pytest.mark.e2e
STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]


ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _env(tmp_path: Path, temporal_cli_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        STAGECOACH_TEMPORAL_UI_PORT=str(free_port()),
        STAGECOACH_API_PORT=str(free_port()),
        STAGECOACH_WORKER_METRICS_PORT=str(free_port()),
        STAGECOACH_TEMPORAL_METRICS_PORT=str(free_port()),
        STAGECOACH_ADMIN_TOKEN=ADMIN_TOKEN,
        TEMPORAL_CLI_PATH=temporal_cli_path,
    )
    return env


def _wait_until_up(proc: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"stagecoach up exited early ({proc.wait()}): {''.join(lines)}")
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return lines
    pytest.fail("stagecoach up did not print its ready banner in time")


def _stop_and_check_no_orphans(proc: subprocess.Popen[str]) -> None:
    children = psutil.Process(proc.pid).children(recursive=True)
    names = {c.pid: " ".join(c.cmdline()[:3]) for c in children}
    assert len(children) >= 3, names  # temporal, worker, api
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[names.get(p.pid) for p in alive]}"


async def _temporal_answers(address: str) -> str:
    client = await Client.connect(address)
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    return str(info.server_version)


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STAGECOACH, *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=180
    )


def _rehearse_and_read_the_story(env: dict[str, str], cwd: Path) -> None:
    """journeys rehearse, contact show and contact timeline against the running stack."""
    rehearsal = _cli(
        env,
        cwd,
        "journeys",
        "rehearse",
        "onboarding",
        "--time-scale",
        "0.000005",
        "--timeout",
        "120",
    )
    assert rehearsal.returncode == 0, rehearsal.stderr
    out = rehearsal.stdout
    for content in ("onboarding-welcome", "onboarding-quickstart", "onboarding-checklist"):
        assert f"{content}: sent" in out, out
    contact_id = out.split(" as ", 1)[1].split()[0]
    sink = Path(env["STAGECOACH_DATA_DIR"]) / "sink" / "rehearsal" / contact_id
    assert len(list(sink.glob("*.json"))) == 3
    show = _cli(env, cwd, "contact", "show", contact_id)
    assert show.returncode == 0, show.stderr
    assert "received  onboarding-welcome, onboarding-quickstart, onboarding-checklist" in (
        show.stdout
    )
    story = _cli(env, cwd, "contact", "timeline", contact_id, "--json")
    kinds = [e["kind"] for e in json.loads(story.stdout)]
    assert kinds.count("sent") == 3
    assert "wait" in kinds
    preview = _cli(env, cwd, "content", "preview", "onboarding-welcome", "--contact", contact_id)
    assert preview.returncode == 0, preview.stderr
    assert "channel:  email en" in preview.stdout  # the contact's locale, from its workflow
    assert "Rehearsal" in preview.stdout  # its first_name attribute personalises the copy
    for command in ("show", "timeline"):
        unknown = _cli(env, cwd, "contact", command, "no-such-contact")
        assert unknown.returncode == 2
        assert "no contact workflow contact-no-such-contact" in unknown.stderr


def _count(env: dict[str, str], query: str) -> int:
    out = subprocess.run(
        [
            env["TEMPORAL_CLI_PATH"],
            "workflow",
            "count",
            "--address",
            env["STAGECOACH_TEMPORAL_ADDRESS"],
            "--query",
            query,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return int(out.split("Total:")[1].split()[0])


def _demo_contacts_are_searchable(env: dict[str, str], cwd: Path) -> None:
    before = _count(env, 'WorkflowType="Contact"')
    demo = _cli(env, cwd, "demo", "--contacts", "8", "--pace", "0")
    assert demo.returncode == 0, demo.stderr
    assert "for 8 contacts" in demo.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # The demo posts to the API, which names its contacts (contact-c_<hex>).
        moved = _count(env, 'WorkflowType="Contact" AND Stage!="suspect"')
        if _count(env, 'WorkflowType="Contact"') == before + 8 and moved > 0:
            return
        time.sleep(0.5)
    pytest.fail("demo contacts did not show up in search by Stage")


def _event_over_http_reaches_its_contact(env: dict[str, str], cwd: Path, api: str) -> None:
    """A new user's path: a write key from the CLI, a Segment call, the contact's story."""
    created = _cli(env, cwd, "keys", "create", "website", "--source", "web")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    call = {
        "userId": "e2e-user",
        "messageId": "e2e-download",
        "event": "content.downloaded",
        "properties": {"content_id": "wp-digital-transformation", "kind": "whitepaper"},
        "context": {"traits": {"email": "e2e@example.com", "locale": "en"}},
    }
    response = httpx.post(f"{api}/v1/track", json=call, auth=(key, ""))
    assert response.status_code == 200, response.text
    assert httpx.post(f"{api}/v1/track", json=call, auth=("sk_wrong", "")).status_code == 401
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _count(env, 'WorkflowType="Contact" AND Stage="prospect" AND Locale="en"')
        metrics = httpx.get(f"{api}/metrics", headers=ADMIN).text
        if found and "stagecoach_outbox_backlog 0" in metrics:
            return
        time.sleep(0.5)
    pytest.fail(f"the tracked event did not reach a contact workflow: {metrics}")


def _refused_before_starting(env: dict[str, str], cwd: Path, *needles: str) -> None:
    """``up`` ends with one error line naming ``needles`` and the fix, having started
    nothing: no child, no data directory, the frontend port still free."""
    result = subprocess.run(
        [*STAGECOACH, "up"], env=env, capture_output=True, text=True, cwd=cwd, timeout=90
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "starting" not in result.stdout, result.stdout
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("stagecoach: error:")]
    for needle in (*needles, "Fix:"):
        assert needle in line, line
    assert not Path(env["STAGECOACH_DATA_DIR"]).exists()
    host, port = env["STAGECOACH_TEMPORAL_ADDRESS"].rsplit(":", 1)
    with socket.socket() as probe:
        probe.bind((host, int(port)))  # nothing was left listening there


@pytest.mark.parametrize(
    "setting", ["STAGECOACH_WORKER_METRICS_PORT", "STAGECOACH_TEMPORAL_METRICS_PORT"]
)
def test_up_refuses_a_taken_worker_metrics_port_before_starting_anything(
    tmp_path: Path, temporal_cli_path: str, setting: str
) -> None:
    env = _env(tmp_path, temporal_cli_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env[setting])))
        taken.listen()
        _refused_before_starting(env, tmp_path, f"port {env[setting]}", setting)


def test_up_refuses_worker_metrics_ports_that_clash(tmp_path: Path, temporal_cli_path: str) -> None:
    env = _env(tmp_path, temporal_cli_path)
    env["STAGECOACH_TEMPORAL_METRICS_PORT"] = env["STAGECOACH_WORKER_METRICS_PORT"]
    _refused_before_starting(
        env, tmp_path, "STAGECOACH_WORKER_METRICS_PORT", "STAGECOACH_TEMPORAL_METRICS_PORT"
    )


def test_up_refuses_a_ui_server_path_that_is_no_program(
    tmp_path: Path, temporal_cli_path: str
) -> None:
    env = _env(tmp_path, temporal_cli_path)
    env["TEMPORAL_UI_SERVER_PATH"] = str(tmp_path / "no-such-ui-server")
    _refused_before_starting(env, tmp_path, "TEMPORAL_UI_SERVER_PATH", "no-such-ui-server")


def _second_up_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    """A second ``up`` on the same machine, its own Temporal, UI and API ports but the
    default-alike worker metrics ports of the first, stops before starting anything."""
    second = _env(tmp_path / "second", env["TEMPORAL_CLI_PATH"])
    second["STAGECOACH_WORKER_METRICS_PORT"] = env["STAGECOACH_WORKER_METRICS_PORT"]
    second["STAGECOACH_TEMPORAL_METRICS_PORT"] = env["STAGECOACH_TEMPORAL_METRICS_PORT"]
    (tmp_path / "second").mkdir()
    _refused_before_starting(
        second,
        tmp_path / "second",
        f"port {env['STAGECOACH_WORKER_METRICS_PORT']}",
        "STAGECOACH_WORKER_METRICS_PORT",
    )


def test_children_stop_when_the_supervisor_is_killed_outright(
    tmp_path: Path, temporal_cli_path: str
) -> None:
    env = _env(tmp_path, temporal_cli_path)
    proc = subprocess.Popen(
        [*STAGECOACH, "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    _wait_until_up(proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # SIGKILL: no chance to stop anything in order
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    for straggler in alive:
        straggler.kill()
    assert not alive, [" ".join(p.cmdline()[:3]) for p in alive]


def test_up_serves_everything_and_ctrl_c_leaves_no_child(
    tmp_path: Path, temporal_cli_path: str
) -> None:
    env = _env(tmp_path, temporal_cli_path)
    api = f"http://127.0.0.1:{env['STAGECOACH_API_PORT']}"
    for run in ("cold", "warm"):  # the second run reuses the same Temporal database file
        proc = subprocess.Popen(
            [*STAGECOACH, "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        try:
            banner = "".join(_wait_until_up(proc))
            assert api in banner, banner
            assert "Temporal Web UI" in banner, banner
            assert httpx.get(f"{api}/healthz").json()["status"] == "ok"
            ui = httpx.get(f"http://127.0.0.1:{env['STAGECOACH_TEMPORAL_UI_PORT']}/")
            assert ui.status_code == 200
            assert "<html" in ui.text.lower()
            assert asyncio.run(_temporal_answers(env["STAGECOACH_TEMPORAL_ADDRESS"]))
            doctor = subprocess.run(
                [*STAGECOACH, "doctor", "--json", "--deep"],
                env=env,
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=60,
            )
            report = json.loads(doctor.stdout)
            assert doctor.returncode == 0, (run, doctor.stderr)
            assert report["ok"], (run, report)
            assert {c["name"] for c in report["checks"]} >= {
                "database",
                "migrations",
                "temporal",
                "search attributes",
                "worker",
                "round trip",
            }
            if run == "warm":
                _second_up_is_refused(env, tmp_path)
                _rehearse_and_read_the_story(env, tmp_path)
                _event_over_http_reaches_its_contact(env, tmp_path, api)
                _demo_contacts_are_searchable(env, tmp_path)
            _stop_and_check_no_orphans(proc)
        finally:
            if proc.poll() is None:  # a failed assertion: leave nothing behind either
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
    assert (tmp_path / ".stagecoach" / "temporal.db").exists()
