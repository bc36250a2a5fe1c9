from fastapi.testclient import TestClient

from stagecoach.engine.app import create_app
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.settings import Settings


def test_healthz_reports_ok_with_a_reachable_database(api: TestClient) -> None:
    resp = api.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["database"] == "ok"


def test_healthz_is_503_with_the_cause_when_the_database_is_down(settings: Settings) -> None:
    down = make_engine("postgresql://u@127.0.0.1:1/none")
    with TestClient(create_app(settings, db=down)) as http:
        resp = http.get("/healthz")
    assert resp.status_code == 503
    assert "127.0.0.1:1" in resp.json()["database"]


def test_openapi_documents_the_health_endpoint(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert "/healthz" in spec["paths"]
