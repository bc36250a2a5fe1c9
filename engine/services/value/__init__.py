"""Customer value: the refresh that values every customer (RFM, the ABC tier, BG/NBD
and Gamma-Gamma CLV and probability alive, repurchase intervals, cross-sell pairs), and
the reads the CLI, the API and the dashboard share."""

from stagecoach.engine.services.value.reads import (
    contact_value,
    cross_sell_report,
    latest_run,
    value_report,
)
from stagecoach.engine.services.value.refresh import RunResult, refresh_values

__all__ = [
    "RunResult",
    "contact_value",
    "cross_sell_report",
    "latest_run",
    "refresh_values",
    "value_report",
]
