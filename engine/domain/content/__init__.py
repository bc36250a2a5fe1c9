"""The content library: the catalog marketers write, validated, selected from, rendered.

Pure of I/O except reading the catalog at load. One call loads and validates everything::

    library = ContentLibrary.load(Path("content"))
    item = library.select_next(stage="lead", locale="en", channel="email",
                               received={"wp-digital-transformation"}, now=now)
    message = library.render(item.id, channel="email", locale="en",
                             contact=RenderContact("c-1", {"first_name": "Ana"}),
                             now=now, signer=signer, idempotency_key=key)
    mime = message.to_mime("Northwind IoT <news@example.com>", "ana@example.com")

An item's ``version`` is the content hash of its front matter and every template source it
uses (layouts included); a send records the version it rendered.
"""

from ._errors import (
    ContentError,
    ContentProblem,
    ContentValidationError,
    RenderError,
    TokenError,
    TokenExpired,
    TokenInvalid,
    UnknownContentError,
)
from ._library import BUNDLED_CONTENT_DIR, ContentLibrary
from ._model import (
    CHANNELS,
    FUNNEL_STAGES,
    GATINGS,
    KINDS,
    PROMOTIONAL_KINDS,
    ContentItem,
    RenderContact,
    RenderedMessage,
    funnel_stage_for,
)
from ._render import BUILTIN_NAMES, WECHAT_FIELD_LIMIT
from ._signing import CLICK, DEFAULT_TOKEN_TTL, OPEN, UNSUBSCRIBE, LinkSigner

__all__ = [
    "BUILTIN_NAMES",
    "BUNDLED_CONTENT_DIR",
    "CHANNELS",
    "CLICK",
    "DEFAULT_TOKEN_TTL",
    "FUNNEL_STAGES",
    "GATINGS",
    "KINDS",
    "OPEN",
    "PROMOTIONAL_KINDS",
    "UNSUBSCRIBE",
    "WECHAT_FIELD_LIMIT",
    "ContentError",
    "ContentItem",
    "ContentLibrary",
    "ContentProblem",
    "ContentValidationError",
    "LinkSigner",
    "RenderContact",
    "RenderError",
    "RenderedMessage",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "UnknownContentError",
    "funnel_stage_for",
]
