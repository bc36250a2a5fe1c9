"""Stagecoach's channel connectors: one subpackage per channel.

- :mod:`connectors.email`: the MIME building every email connector shares, and the HTTP
  email providers (a generic JSON API, Postmark);
- :mod:`connectors.smtp`: email over a pool of SMTP sessions;
- :mod:`connectors.wechat`: WeChat Official Account messages;
- :mod:`connectors.crm`: hand-offs to sales (a signed webhook, HubSpot).

Shared by all of them: :mod:`connectors.ratelimit` (one send rate per connector) and
:mod:`connectors.filesink` (the connector every channel uses until a real one is
configured, and the rehearsal sink). Each connector implements
:class:`engine.delivery.Connector`; only the composition root
(:mod:`engine.cli.compose`) chooses and builds them.
"""

from connectors.crm import HubSpotConnector, WebhookConnector
from connectors.email import (
    HttpEmailConfig,
    HttpEmailConnector,
    PostmarkConfig,
    PostmarkConnector,
)
from connectors.filesink import FileSinkConnector
from connectors.ratelimit import RateLimiter
from connectors.smtp import SmtpConfig, SmtpConnector
from connectors.wechat import WeChatConfig, WeChatConnector

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
