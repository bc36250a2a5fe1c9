"""Worker metrics: activity counts from an interceptor, and the Temporal runtime's own
Prometheus exporter.

``ActivityMetrics`` counts every activity attempt and every failure by activity type
(``stagecoach.engine.metrics``), so an activity's error rate is one PromQL division and no activity
counts for itself. ``prometheus_runtime`` is a Temporal runtime whose SDK metrics
(``temporal_activity_execution_failed``, ``temporal_workflow_task_schedule_to_start_
latency``, sticky cache, pollers...) are served on their own port; the worker's client
connects with it.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from stagecoach.engine.metrics import count_activity


class ActivityMetrics(Interceptor):
    """Counts activity attempts and failures (``stagecoach_activity_*``)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountingInbound(next)


class _CountingInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        try:
            result = await super().execute_activity(input)
        except BaseException as exc:  # cancellation too: the attempt did not complete
            count_activity(name, error_name(exc))
            raise
        count_activity(name)
        return result


def error_name(exc: BaseException) -> str:
    """The ``error`` label: an ApplicationError's type (``RetryableDeliveryError``), else
    the exception's class name: bounded by the code, never by a message."""
    if isinstance(exc, ApplicationError) and exc.type:
        return exc.type
    return type(exc).__name__


def prometheus_runtime(host: str, port: int) -> Runtime:
    """A Temporal runtime exporting the SDK's metrics at ``http://host:port/metrics``.

    Durations stay in milliseconds, as Temporal's published dashboards expect.
    """
    return Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{port}"))
    )
