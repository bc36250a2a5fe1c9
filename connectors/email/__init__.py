"""Email, whichever way it leaves: the MIME building every email connector shares
(:mod:`~stagecoach.connectors.email.mime`) and the HTTP providers: a generic JSON API
(:mod:`~stagecoach.connectors.email.http`, which also holds the base every HTTP provider shares) and
Postmark (:mod:`~stagecoach.connectors.email.postmark`). The SMTP connector is
:mod:`stagecoach.connectors.smtp`.
"""

from stagecoach.connectors.email.http import (
    HttpEmailConfig,
    HttpEmailConnector,
    interpret_generic_response,
)
from stagecoach.connectors.email.mime import (
    IDEMPOTENCY_HEADER,
    PreparedEmail,
    build_mime,
    prepare_email,
    recipient_address,
    rendered_email,
)
from stagecoach.connectors.email.postmark import (
    PostmarkConfig,
    PostmarkConnector,
    interpret_postmark_response,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "HttpEmailConfig",
    "HttpEmailConnector",
    "PostmarkConfig",
    "PostmarkConnector",
    "PreparedEmail",
    "build_mime",
    "interpret_generic_response",
    "interpret_postmark_response",
    "prepare_email",
    "recipient_address",
    "rendered_email",
]
