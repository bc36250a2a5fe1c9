"""The WeChat Official Account channel: template and customer-service messages.

:mod:`~stagecoach.connectors.wechat.connector` sends, :mod:`~stagecoach.connectors.wechat.tokens`
keeps the access token fresh, and :mod:`~stagecoach.connectors.wechat.errors` maps WeChat's
``errcode`` values to delivery errors (the table is in the connector's docstring).
"""

from stagecoach.connectors.wechat.connector import (
    CUSTOMER_SERVICE_WINDOW,
    LastInteraction,
    WeChatConfig,
    WeChatConnector,
    window_open,
)
from stagecoach.connectors.wechat.errors import (
    BAD_MESSAGE,
    WINDOW_CLOSED,
    WeChatCredentialsRejected,
    until_quota_reset,
)
from stagecoach.connectors.wechat.tokens import DEFAULT_API_BASE, AccessTokenService

__all__ = [
    "BAD_MESSAGE",
    "CUSTOMER_SERVICE_WINDOW",
    "DEFAULT_API_BASE",
    "WINDOW_CLOSED",
    "AccessTokenService",
    "LastInteraction",
    "WeChatConfig",
    "WeChatConnector",
    "WeChatCredentialsRejected",
    "until_quota_reset",
    "window_open",
]
