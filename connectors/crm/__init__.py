"""The CRM channel: hand qualified leads to sales.

:mod:`~stagecoach.connectors.crm.webhook` posts each hand-off as signed JSON to any HTTPS endpoint
(and holds the signature scheme receivers verify); :mod:`~stagecoach.connectors.crm.hubspot`
creates or updates the contact in HubSpot and notes the hand-off on it.
"""

from stagecoach.connectors.crm.hubspot import HubSpotConnector
from stagecoach.connectors.crm.webhook import (
    DEFAULT_TOLERANCE,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    InvalidSignature,
    Secret,
    Secrets,
    WebhookConnector,
    compute_signature,
    sign,
    verify_signature,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "HubSpotConnector",
    "InvalidSignature",
    "Secret",
    "Secrets",
    "WebhookConnector",
    "compute_signature",
    "sign",
    "verify_signature",
]
