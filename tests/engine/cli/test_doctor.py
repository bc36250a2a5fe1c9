"""``stagecoach doctor --deep`` against a running worker says what the README and the
site's Getting started page say it says: the same number of ``ok`` lines, naming the same
checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.settings import Settings
from tests.engine.cli.conftest import ROOT, Shell
from tests.workflows.conftest import open_runtime

NUMBERS = {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}


# The README's first steps and the site's Getting started page both make the promise.
PROMISED_IN = ("README.md", "docs/getting-started.md")


def promised(deep: bool, where: str = "README.md") -> tuple[int, list[str]]:
    """The promise for ``doctor --deep`` (or without it) in ``where``: how many ``ok``
    lines, and the checks they name."""
    text = " ".join((ROOT / where).read_text(encoding="utf-8").split())
    found = re.search(
        r"`\.venv/bin/stagecoach doctor --deep` should print (\w+) `ok` lines: ([^.(]+)"
        r"\(without `--deep`, the first (\w+)\)",
        text,
    )
    assert found, f"{where} no longer says what doctor --deep prints"
    names = [n.strip() for n in re.split(r",| and ", found[2]) if n.strip()]
    count = NUMBERS[found[1] if deep else found[3]]
    return count, names[:count]


async def test_doctor_deep_prints_the_ok_lines_the_readme_promises(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    shell: Callable[[Settings], Shell],
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        for deep in (True, False):
            code, out, err = await shell(runtime.settings).run(
                "doctor", *(["--deep"] if deep else [])
            )
            assert code == 0, out + err
            lines = out.splitlines()
            assert all(line.startswith("ok  ") for line in lines), out
            shown = [line[4:].strip() for line in lines]
            for where in PROMISED_IN:
                count, names = promised(deep, where)
                assert len(lines) == count, (where, out)
                assert [s[: len(n)] for s, n in zip(shown, names, strict=True)] == names, (
                    where,
                    out,
                )
