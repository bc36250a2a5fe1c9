"""Reading a contact's encrypted history in the Temporal Web UI, as docs/codec.md says.

``stagecoach up`` runs for real (a subprocess with its own ports); a contact is created
over the event API with an email address, which Temporal stores encrypted; headless
Chromium then does what an operator does: sign in at ``<api>/codec/login``, open the
contact's workflow in the Web UI, open its signal event and read the email address.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import free_port

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

TOKEN = "ui-codec-admin-token-0123456789"  # the API refuses under 24 characters
EMAIL = "ada.lovelace@example.com"


@dataclass(frozen=True)
class Stack:
    ui: str
    api: str
    workflow_id: str
    api_log: Path


@contextlib.contextmanager
def stagecoach_up(tmp_path: Path, env_overrides: dict[str, str]) -> Iterator[Stack]:
    """``stagecoach up`` on free ports with one contact whose traits hold :data:`EMAIL`."""
    env = {k: v for k, v in os.environ.items() if k != "TEMPORAL_UI_SERVER_PATH"}
    address = f"127.0.0.1:{free_port()}"
    ui_port, api_port = free_port(), free_port()
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_TEMPORAL_ADDRESS=address,
        STAGECOACH_TEMPORAL_UI_PORT=str(ui_port),
        STAGECOACH_API_PORT=str(api_port),
        STAGECOACH_WORKER_METRICS_PORT=str(free_port()),
        STAGECOACH_TEMPORAL_METRICS_PORT=str(free_port()),
        STAGECOACH_ADMIN_TOKEN=TOKEN,
        **env_overrides,
    )
    command = [sys.executable, "-m", "stagecoach.engine.cli"]
    proc = subprocess.Popen(
        [*command, "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert "Web UI decryption" in _wait_for_banner(proc)
        api = f"http://127.0.0.1:{api_port}"
        key = subprocess.run(
            [*command, "keys", "create", "website"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=True,
            timeout=60,
        ).stdout.strip()
        identify = {
            "userId": "ui-codec-user",
            "messageId": "ui-codec-identify",
            "traits": {"email": EMAIL, "first_name": "Ada"},
        }
        answer = httpx.post(f"{api}/v1/identify", json=identify, auth=(key, ""), timeout=10)
        assert answer.status_code == 200, answer.text
        workflow_id = _the_contact_workflow(env["TEMPORAL_CLI_PATH"], address)
        yield Stack(
            f"http://127.0.0.1:{ui_port}",
            api,
            workflow_id,
            tmp_path / ".stagecoach" / "logs" / "api.log",
        )
    finally:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # up refused to start: its output says why
            children = []
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        finally:
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            if proc.poll() is None:
                proc.kill()


def _wait_for_banner(proc: subprocess.Popen[str], timeout: float = 150) -> str:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"stagecoach up exited early ({proc.wait()}): {''.join(lines)}")
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return "".join(lines)
    pytest.fail("stagecoach up did not print its ready banner in time")


def _the_contact_workflow(temporal_cli: str, address: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = subprocess.run(
            [temporal_cli, "workflow", "list", "--address", address, "-o", "json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        ids: list[str] = [w["execution"]["workflowId"] for w in json.loads(listed or "[]")]
        contacts = [i for i in ids if i.startswith("contact-")]
        if contacts:
            return contacts[0]
        time.sleep(0.5)
    pytest.fail("the identify call did not start a contact workflow")


def _sign_in(page: Any, stack: Stack) -> None:
    """docs/codec.md: open <api>/codec/login and sign in with the admin token."""
    page.goto(f"{stack.api}/codec/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button")
    page.wait_for_load_state()
    assert "Signed in" in page.inner_text("body")


def _open_history(page: Any, stack: Stack) -> None:
    """The workflows list, then the contact's workflow: its event history."""
    page.goto(f"{stack.ui}/namespaces/default/workflows")
    page.get_by_role("link", name=stack.workflow_id).first.click()
    page.get_by_text("Workflow Execution Signaled").first.wait_for(timeout=30_000)


def _signal_text(page: Any) -> str:
    """Open the contact's first signal (the identify call) and return the page's text."""
    page.get_by_text("Workflow Execution Signaled").first.click()
    with contextlib.suppress(Exception):  # absent while the payload is undecodable
        page.get_by_text(EMAIL).first.wait_for(timeout=10_000)
    text: str = page.inner_text("body")
    return text


def _codec_status(page: Any) -> str:
    """Which codec badge the UI shows in its top bar: 'success' or 'error'."""
    for status in ("success", "error"):
        if page.get_by_test_id(f"data-encoder-status-{status}").count():
            return status
    return "none"


def test_up_serves_a_web_ui_that_decodes_for_a_signed_in_operator(
    tmp_path: Path, temporal_cli_path: str, temporal_ui_server_path: str, page: Any, artifacts: Path
) -> None:
    tab = page.page
    with stagecoach_up(
        tmp_path,
        {
            "TEMPORAL_CLI_PATH": temporal_cli_path,
            "TEMPORAL_UI_SERVER_PATH": temporal_ui_server_path,
        },
    ) as stack:
        # Not signed in: Temporal holds ciphertext and the codec refuses the browser.
        _open_history(tab, stack)
        assert EMAIL not in _signal_text(tab)
        assert _codec_status(tab) == "error"

        _sign_in(tab, stack)
        _open_history(tab, stack)
        text = _signal_text(tab)
        tab.screenshot(path=str(artifacts / "temporal-ui-decoded.png"), full_page=True)
        assert EMAIL in text
        assert '"first_name": "Ada"' in text
        assert _codec_status(tab) == "success"
        assert "could not connect" not in text
        logged = [
            json.loads(line) for line in stack.api_log.read_text().splitlines() if "{" in line
        ]
        decodes = [e for e in logged if e.get("event") == "codec"]
        assert decodes
        assert {e["caller"] for e in decodes} == {"session"}


def test_without_the_ui_server_the_documented_browser_setting_decodes(
    tmp_path: Path, temporal_cli_path: str, page: Any
) -> None:
    """The fallback docs/codec.md describes when no UI server binary is available: the dev
    server's own UI, set once per browser to send credentials, then reloaded."""
    tab = page.page
    cache = tmp_path / "empty-cache"  # no UI server in it: `up` serves the built-in UI
    with stagecoach_up(
        tmp_path,
        {"TEMPORAL_CLI_PATH": temporal_cli_path, "STAGECOACH_CACHE_DIR": str(cache)},
    ) as stack:
        _sign_in(tab, stack)
        _open_history(tab, stack)
        assert EMAIL not in _signal_text(tab)  # signed in, but the UI sends no cookie

        # The Codec Server button (top right), as the docs walk through it.
        tab.get_by_test_id("data-encoder-status-error").click()
        tab.get_by_role("button", name="Use Cluster-level setting,").click()
        tab.get_by_text("Use my browser setting and ignore Cluster-level setting.").click()
        tab.get_by_placeholder("Paste your endpoint here").fill(f"{stack.api}/codec")
        # The drawer slides under the sticky top bar, which takes the pointer's clicks:
        # the keyboard operates the switch and the button as a user's would.
        switch = tab.locator("#pass-access-credentials")
        switch.focus()
        tab.keyboard.press("Space")
        assert switch.is_checked()
        tab.get_by_test_id("confirm-data-encoder-button").focus()
        tab.keyboard.press("Enter")
        tab.wait_for_function("localStorage.getItem('includeCredentials') === 'true'")
        tab.reload()  # the docs' last step: payloads already shown are not decoded again
        tab.get_by_text("Workflow Execution Signaled").first.wait_for(timeout=30_000)
        assert EMAIL in _signal_text(tab)
        assert _codec_status(tab) == "success"
