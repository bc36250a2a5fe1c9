"""``stagecoach propensity retrain``: run the propensity Schedule now.

The worker creates the Schedule at start; this command creates or updates it the same
way (so it also works before any worker started) and triggers a run, which a worker on
the task queue picks up. With ``--wait`` it waits for that run's answer: the version it
published, or why it published nothing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.logging import configure_logging
from stagecoach.engine.settings import load_settings

prediction_app = typer.Typer(help="Conversion propensity: retrain now.", no_args_is_help=True)
DEFAULT_EVERY_HOURS = 24.0
"""The Schedule's interval when STAGECOACH_PROPENSITY_RETRAIN_HOURS is 0 (no schedule):
the command still needs one to trigger."""


@prediction_app.command("retrain")
def retrain(
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the run and print what it published.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: seconds to wait for the run.", min=1)
    ] = 1800,
) -> None:
    """Trigger the propensity retrain Schedule now (a worker runs it)."""
    from temporalio.client import WorkflowExecutionStatus

    from stagecoach.workflows.client import connect
    from stagecoach.workflows.prediction.schedule import ensure_retrain_schedule

    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)
    hours = settings.propensity_retrain_hours or DEFAULT_EVERY_HOURS

    async def run() -> dict[str, Any] | None:
        client = await connect(settings)
        handle = await ensure_retrain_schedule(
            client, task_queue=settings.temporal_task_queue, every=timedelta(hours=hours)
        )
        before = _started((await handle.describe()).info.recent_actions)
        await handle.trigger()
        typer.echo(f"triggered schedule {handle.id}")
        if not wait:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            started = [
                w
                for w in _started((await handle.describe()).info.recent_actions)
                if w not in before
            ]
            if started:
                workflow = client.get_workflow_handle(started[-1])
                if (await workflow.describe()).status != WorkflowExecutionStatus.RUNNING:
                    result: dict[str, Any] = await workflow.result()
                    return result
            await asyncio.sleep(0.5)
        raise StagecoachError(
            f"the retrain did not finish within {timeout:.0f} s",
            fix="check that a worker runs on the task queue (stagecoach doctor), or wait longer",
        )

    try:
        answer = asyncio.run(run())
    except StagecoachError as exc:
        typer.echo(f"error: {exc.one_line()}", err=True)
        raise typer.Exit(2) from None
    if answer is not None:
        typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        if not answer.get("published"):
            raise typer.Exit(1)


def _started(actions: Any) -> list[str]:
    """The workflow ids the Schedule's recent actions started, oldest first."""
    from temporalio.client import ScheduleActionExecutionStartWorkflow

    return [
        a.action.workflow_id
        for a in actions
        if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    ]
