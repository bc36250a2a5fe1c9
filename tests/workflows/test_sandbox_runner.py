"""The worker's sandbox runner (``stagecoach.workflows.sandbox``): the same sandbox, minus the
per-task costs; these tests fail when an SDK upgrade moves what it relies on."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.common.v1 import Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter, WorkflowSerializationContext
from temporalio.worker import Replayer, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox._runner import _Instance

import stagecoach.workflows.contact
from stagecoach.workflows.broadcasts import BroadcastWorkflow
from stagecoach.workflows.contact import ContactWorkflow
from stagecoach.workflows.prediction import PropensityRetrainWorkflow
from stagecoach.workflows.sandbox import LeanSandboxedWorkflowRunner, lean_sandbox
from stagecoach.workflows.value import ValueRefreshWorkflow
from stagecoach.workflows.worker import build_worker

HISTORIES = sorted(Path(__file__).with_name("histories").glob("*.json"))


def _details(info: workflow.Info) -> WorkflowInstanceDetails:
    return WorkflowInstanceDetails(
        payload_converter_factory=DataConverter.default._new_payload_converter,
        failure_converter_class=DataConverter.default.failure_converter_class,
        interceptor_classes=[],
        defn=workflow._Definition.must_from_class(ContactWorkflow),
        info=info,
        randomness_seed=1,
        extern_functions={},
        disable_eager_activity_execution=False,
        worker_level_failure_exception_types=[],
        patch_activation_callback=None,
        last_completion_result=Payloads(),
        last_failure=Failure(),
    )


@pytest.fixture
def info() -> workflow.Info:
    from temporalio.worker.workflow_sandbox._runner import _fake_info

    return _fake_info


@pytest.fixture
def compiles() -> Iterator[list[str]]:
    """File names ``compile`` was called with while the test ran."""
    seen: list[str] = []
    original = builtins.compile

    def spy(source: Any, filename: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(filename))
        return original(source, filename, *args, **kwargs)

    builtins.compile = spy
    try:
        yield seen
    finally:
        builtins.compile = original


async def test_serialization_context_is_the_sandboxed_instances_answer(
    info: workflow.Info,
) -> None:
    runner = LeanSandboxedWorkflowRunner()
    runner.prepare_workflow(workflow._Definition.must_from_class(ContactWorkflow))
    instance = runner.create_instance(_details(info))
    assert instance.inner() is not None, "SDK internals moved: the shortcut is off"  # type: ignore[attr-defined]
    # The SDK's own path: the same question asked inside the sandbox.
    expected = _Instance.get_serialization_context(instance, None)  # type: ignore[arg-type]
    assert expected == WorkflowSerializationContext(
        namespace=info.namespace, workflow_id=info.workflow_id
    )
    assert instance.get_serialization_context(None) == expected
    assert instance.get_external_store_context(None) == _Instance.get_external_store_context(
        instance,  # type: ignore[arg-type]
        None,
    )


async def test_each_run_imports_the_workflow_afresh_compiled_once(
    info: workflow.Info, compiles: list[str]
) -> None:
    runner = lean_sandbox()
    runner.prepare_workflow(workflow._Definition.must_from_class(ContactWorkflow))
    compiles.clear()
    first = runner.create_instance(_details(info))
    second = runner.create_instance(_details(info))
    # Still the sandbox's isolation: each run has its own module and class.
    classes = [
        i.globals_and_locals["__temporal_workflow_class"]  # type: ignore[attr-defined]
        for i in (first, second)
    ]
    assert classes[0] is not classes[1]
    assert classes[0] is not ContactWorkflow
    # But the module's source was not compiled again.
    assert stagecoach.workflows.contact.__file__ not in compiles


async def test_the_worker_runs_workflows_in_the_lean_sandbox(client: Client) -> None:
    worker = build_worker(client, task_queue="unused", activities=[])
    assert isinstance(worker.config()["workflow_runner"], LeanSandboxedWorkflowRunner)


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"lean-{path.stem}", path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays_in_the_lean_sandbox(path: Path) -> None:
    history = _history(path)
    await Replayer(
        workflows=[
            ContactWorkflow,
            BroadcastWorkflow,
            ValueRefreshWorkflow,
            PropensityRetrainWorkflow,
        ],
        workflow_runner=lean_sandbox(),
    ).replay_workflow(history)
