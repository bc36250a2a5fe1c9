"""Stagecoach's channel connectors: one subpackage per channel.

- :mod:`stagecoach.connectors.email`: the MIME building every email connector shares, and the HTTP
  email providers (a generic JSON API, Postmark);
- :mod:`stagecoach.connectors.smtp`: email over a pool of SMTP sessions;
- :mod:`stagecoach.connectors.wechat`: WeChat Official Account messages;
- :mod:`stagecoach.connectors.crm`: hand-offs to sales (a signed webhook, HubSpot).

Shared by all of them: :mod:`stagecoach.connectors.ratelimit` (one send rate per connector) and
:mod:`stagecoach.connectors.filesink` (the connector every channel uses until a real one is
configured, and the rehearsal sink). Each connector implements
:class:`stagecoach.engine.protocol.connector.Connector`; only the composition root
(:mod:`stagecoach.engine.cli.compose`) chooses and builds them.
"""

from stagecoach.connectors.crm import HubSpotConnector, WebhookConnector
from stagecoach.connectors.email import (
    HttpEmailConfig,
    HttpEmailConnector,
    PostmarkConfig,
    PostmarkConnector,
)
from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.connectors.smtp import SmtpConfig, SmtpConnector
from stagecoach.connectors.wechat import WeChatConfig, WeChatConnector

__all__ = [
    "FileSinkConnector",
    "HttpEmailConfig",
    "HttpEmailConnector",
    "HubSpotConnector",
    "PostmarkConfig",
    "PostmarkConnector",
    "RateLimiter",
    "SmtpConfig",
    "SmtpConnector",
    "WeChatConfig",
    "WeChatConnector",
    "WebhookConnector",
]
