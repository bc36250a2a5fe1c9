"""The SMTP channel: rendered emails over a bounded pool of reused, pipelined sessions.

:mod:`~stagecoach.connectors.smtp.connector` holds the pool and runs the transactions;
:mod:`~stagecoach.connectors.smtp.replies` says what each SMTP reply means for a delivery. The
message bytes come from :mod:`stagecoach.connectors.email.mime`.
"""

from stagecoach.connectors.smtp.connector import PoolStats, Security, SmtpConfig, SmtpConnector
from stagecoach.connectors.smtp.replies import Stage, classify_reply, enhanced_status

__all__ = [
    "PoolStats",
    "Security",
    "SmtpConfig",
    "SmtpConnector",
    "Stage",
    "classify_reply",
    "enhanced_status",
]
