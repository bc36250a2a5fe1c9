"""What the security tests share: one fully configured app, a contact, row counts.

Every credential the app knows is set to a test value here (admin token, link secret,
Postmark basic auth, the hand-off webhook secret, one WeChat app), so each test can say
which of them a request carries and prove that only the right one opens a route.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine, func
from sqlmodel import Session, SQLModel, select

from stagecoach.engine.app import create_app
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.storage.models import Event
from stagecoach.engine.settings import Settings

ADMIN_TOKEN = "admin-token-for-security-tests-0123456789abcdef"
LINK_SECRET = "link-secret-for-security-tests-0123456789"
WEBHOOK_SECRET = "webhook-secret-for-security-tests-0123456789"
POSTMARK_USER = "postmark-hooks"
POSTMARK_PASSWORD = "correct horse battery staple"
WECHAT_APP = "main"
WECHAT_TOKEN = "wechat-token-for-tests"
WECHAT_APPID = "wx0123456789abcdef"
PUBLIC_URL = "https://mkt.example.com"
CONTACT_EMAIL = "li.lei@example.cn"


def make_settings(tmp_path: Path, *, configured: bool = True, **overrides: Any) -> Settings:
    """Settings confined to ``tmp_path``: every credential set, or none (``configured``)."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / ".stagecoach",
        "database_url": f"sqlite:///{tmp_path / 'security.db'}",
        "cache_dir": tmp_path / "cache",
        "link_secret": SecretStr(LINK_SECRET),
        "public_url": PUBLIC_URL,
        # The walk sends hundreds of wrong credentials from one client on purpose: the
        # throttle has tests of its own (test_auth_walk, "throttle") with a small limit.
        "auth_failure_limit": 1_000_000,
    }
    if configured:
        values.update(
            admin_token=SecretStr(ADMIN_TOKEN),
            postmark_webhook_user=POSTMARK_USER,
            postmark_webhook_password=SecretStr(POSTMARK_PASSWORD),
            webhook_secret=SecretStr(WEBHOOK_SECRET),
            wechat_apps={WECHAT_APP: {"token": WECHAT_TOKEN, "appid": WECHAT_APPID}},
        )
    values.update(overrides)
    return Settings(**values)


def make_app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings, db=engine)


def seed_contact(engine: Engine, *, user_id: str = "u-1001", email: str = CONTACT_EMAIL) -> str:
    """A contact known by user id and email, stored as the API would store it."""
    [[outcome]] = Ingestor(engine).store(
        [
            [
                Incoming(
                    kind="identify",
                    message_id=f"seed-{user_id}",
                    type="identify",
                    occurred_at=datetime.now(UTC) - timedelta(days=1),
                    user_id=user_id,
                    identities={"user_id": user_id, "email": email},
                    traits={"email": email},
                )
            ]
        ]
    )
    return outcome.contact_id


def count(engine: Engine, model: type[SQLModel] = Event) -> int:
    """Rows of ``model`` (events by default): "nothing was stored" is a count unchanged."""
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())
