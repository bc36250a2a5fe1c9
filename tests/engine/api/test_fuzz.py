"""Schema-driven fuzzing of the whole OpenAPI spec with schemathesis: for every
operation, cases that follow the schema and cases that break it, sent with a valid
write key, with the admin token, and with neither. Nothing may answer 500."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
from pydantic import SecretStr
from schemathesis import GenerationMode

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

EXAMPLES_PER_MODE = 20


def test_no_request_anywhere_in_the_spec_gets_a_server_error(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/fuzz.db",
        postmark_webhook_user="postmark",
        postmark_webhook_password=SecretStr("hook-secret"),
        admin_token=SecretStr("admin-secret"),
    )
    engine = migrated_engine(settings.resolved_database_url)
    key = create_write_key(engine, "fuzz", source="fuzz")
    app = create_app(settings, db=engine)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    admin = {"Authorization": "Bearer admin-secret"}  # the admin routes: contacts, reports
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 10  # events, touchpoints, ops: the spec is really walked
    failures: list[Any] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                database=None,
                derandomize=True,
            )
            def probe(case: Any) -> None:
                for headers in (auth, admin, {}):
                    response = case.call(headers=headers)
                    # 503 is a documented answer (database busy, webhook not configured);
                    # any other 5xx is a defect.
                    if response.status_code >= 500 and response.status_code != 503:
                        failures.append(
                            (case.method, case.formatted_path, response.status_code, case.body)
                        )

            try:
                probe()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to break: an operation without parameters or body
    engine.dispose()
    assert failures == [], failures[:5]
