"""The workflow sandbox, without three costs that are not the sandbox's job.

Temporal's ``SandboxedWorkflowRunner`` runs workflow code in a sandbox: restricted
imports and builtins, fresh module state per run. Stagecoach keeps it. But the SDK
(1.35) also enters the sandbox for work that runs no workflow code, and that was most of
the contact worker's CPU per signalled event (``tests/bench/test_event_cost.py``):

- Before and after each activation the SDK asks the workflow instance for the
  serialization context of every payload sequence it decodes or encodes (three visitor
  passes each way). The answer is SDK bookkeeping: the workflow's namespace and id, or a
  pending activity's or child's. Each question was an ``exec`` of a source string inside
  the sandbox, with its import and builtins restrictions applied and removed. Here the
  question goes straight to the instance the sandbox holds: the same SDK method on the
  same object, giving the same answer, minus the ``exec`` and the restriction swap. No
  workflow code runs in it, so nothing the sandbox guards is bypassed.
- Every ``exec`` compiled its source string again. Here each string is compiled once and
  the code object executed, exactly as ``exec`` of the string would.
- Every new workflow run (a new contact, a continue-as-new, a replay after the cache
  evicted a contact) imports the workflow's module afresh inside the sandbox, which is
  how the sandbox isolates module state. Where no bytecode cache exists (a source
  checkout run with ``PYTHONDONTWRITEBYTECODE=1``, as this project's test and dev
  environments are; an installed wheel has its ``.pyc`` files) that meant compiling
  ``workflows/contact/`` from source each time: several milliseconds of CPU per run.
  Here the workflow package's modules are compiled once per file version (path,
  modification time, size), and each import still executes the module body afresh in
  the sandbox's own module: only the compilation is shared.

Activations (the workflow's own code) still run inside the sandbox with its
restrictions, as before. If the SDK's internals ever stop matching what this module
expects, each shortcut falls back to the SDK's own path, and
``tests/workflows/test_sandbox_runner.py`` fails so that someone looks.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import CodeType
from typing import Any, ClassVar

from temporalio.converter import SerializationContext
from temporalio.converter._extstore import StorageDriverStoreContext
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker._command_aware_visitor import CommandInfo
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox._runner import _Instance
from temporalio.workflow import _Definition

IN_SANDBOX = "__temporal_in_sandbox"
"""The name under which the SDK keeps its in-sandbox object (``InSandbox``)."""


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> CodeType:
    # "<string>" is the name exec gives a source string: tracebacks read the same.
    return compile(source, "<string>", "exec")


class _LeanInstance(_Instance):
    """The SDK's sandboxed instance, asking SDK-only questions outside the sandbox."""

    _inner: WorkflowInstance | None = None

    def _create_instance(self) -> None:
        super()._create_instance()
        holder = self.globals_and_locals.get(IN_SANDBOX)
        instance = getattr(holder, "instance", None)
        if isinstance(instance, WorkflowInstance):
            self._inner = instance

    def _run_code(self, code: str, **extra_globals: Any) -> None:
        super()._run_code(_compiled(code), **extra_globals)  # type: ignore[arg-type]

    def inner(self) -> WorkflowInstance | None:
        """The SDK's workflow instance inside the sandbox, or None if it is not where
        SDK 1.35 keeps it (then the SDK's own, slower path is used)."""
        return self._inner

    def get_serialization_context(
        self, command_info: CommandInfo | None
    ) -> SerializationContext | None:
        instance = self._inner
        if instance is None:
            return super().get_serialization_context(command_info)
        return instance.get_serialization_context(command_info)

    def get_external_store_context(
        self, command_info: CommandInfo | None
    ) -> StorageDriverStoreContext:
        instance = self._inner
        if instance is None:
            return super().get_external_store_context(command_info)
        return instance.get_external_store_context(command_info)


class _CompiledOnceLoader(importlib.machinery.SourceFileLoader):
    """A source file loader that compiles each version of a file once per process."""

    _code: ClassVar[dict[tuple[str, int, int], CodeType]] = {}

    def get_code(self, fullname: str) -> CodeType | None:
        path = self.get_filename(fullname)
        try:
            stat = os.stat(path)
        except OSError:
            return super().get_code(fullname)
        key = (path, stat.st_mtime_ns, stat.st_size)
        code = self._code.get(key)
        if code is None:
            code = super().get_code(fullname)
            if code is not None:
                self._code[key] = code
        return code


class _CompiledOnceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of ``packages`` where the path finder would, with
    :class:`_CompiledOnceLoader` as their loader; anything else is left to the others."""

    def __init__(self) -> None:
        self.packages: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] not in self.packages:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return None  # not a plain source module: the usual finders decide
        return importlib.util.spec_from_file_location(
            fullname,
            spec.origin,
            loader=_CompiledOnceLoader(fullname, str(spec.origin)),
            submodule_search_locations=spec.submodule_search_locations,
        )


_FINDER = _CompiledOnceFinder()
_FINDER_LOCK = threading.Lock()


def compile_once(package: str) -> None:
    """Compile ``package``'s modules once per process, however often they are imported
    (installs the finder first on ``sys.meta_path``; idempotent)."""
    with _FINDER_LOCK:
        _FINDER.packages.add(package)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


class LeanSandboxedWorkflowRunner(SandboxedWorkflowRunner):
    """``SandboxedWorkflowRunner`` with the same restrictions, minus the per-task costs
    described in the module docstring. The worker's default runner."""

    def prepare_workflow(self, defn: _Definition) -> None:
        compile_once(defn.cls.__module__.partition(".")[0])
        super().prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _LeanInstance(det, self.runner_class, self.restrictions)


def lean_sandbox() -> WorkflowRunner:
    """The runner ``stagecoach.workflows.worker.build_worker`` uses."""
    return LeanSandboxedWorkflowRunner()
