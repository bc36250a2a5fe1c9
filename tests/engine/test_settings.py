from pathlib import Path

import pytest

from engine.errors import ConfigurationError
from engine.settings import Settings, load_settings


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGECOACH_API_PORT", "9123")
    monkeypatch.setenv("STAGECOACH_TEMPORAL_NAMESPACE", "marketing")
    monkeypatch.setenv("TEMPORAL_CLI_PATH", "/opt/temporal")
    settings = load_settings()
    assert settings.api_port == 9123
    assert settings.temporal_namespace == "marketing"
    assert settings.temporal_cli_path == Path("/opt/temporal")


def test_default_database_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'state' / 'stagecoach.db'}"


def test_invalid_setting_names_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGECOACH_API_PORT", "not-a-port")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    line = caught.value.one_line()
    assert "STAGECOACH_API_PORT" in line
    assert "Fix:" in line


@pytest.mark.parametrize("address", ["localhost", "host:", ":7233", "host:99999"])
def test_malformed_temporal_address_is_refused(address: str) -> None:
    with pytest.raises(ConfigurationError, match="STAGECOACH_TEMPORAL_ADDRESS"):
        _ = Settings(temporal_address=address).temporal_host_port


def test_cloud_address_splits_into_host_and_port() -> None:
    settings = Settings(temporal_address="ns.a1b2c.tmprl.cloud:7233")
    assert settings.temporal_host_port == ("ns.a1b2c.tmprl.cloud", 7233)
