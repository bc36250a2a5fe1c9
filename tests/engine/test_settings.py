import stat
from pathlib import Path

import pytest

from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.settings import (
    DEV_LINK_SECRET,
    LINK_SECRET_FILE,
    Settings,
    check_api_credentials,
    ensure_link_secret_file,
    load_settings,
)


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


def test_the_link_secret_comes_from_the_data_dir_file_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STAGECOACH_LINK_SECRET", raising=False)
    data = tmp_path / "state"
    assert Settings(data_dir=data).link_secret.get_secret_value() == DEV_LINK_SECRET
    written = ensure_link_secret_file(Settings(data_dir=data))
    path = data / LINK_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(written.get_secret_value()) >= 43
    # Every process of this data directory now reads it, from the environment too.
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(data))
    assert load_settings().link_secret == written
    # A second start keeps it: links already sent stay valid.
    assert ensure_link_secret_file(load_settings()) == written
    assert path.read_text().strip() == written.get_secret_value()
    # An explicit setting wins over the file.
    monkeypatch.setenv("STAGECOACH_LINK_SECRET", "x" * 40)
    assert load_settings().link_secret.get_secret_value() == "x" * 40


@pytest.mark.parametrize(
    ("host", "exposed"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),  # noqa: S104 (the case under test)
        ("10.0.0.5", True),
        ("api.internal", True),
    ],
)
def test_the_development_link_secret_is_refused_beyond_loopback(host: str, exposed: bool) -> None:
    settings = Settings(api_host=host)
    if not exposed:
        check_api_credentials(settings)
        return
    with pytest.raises(ConfigurationError, match="STAGECOACH_LINK_SECRET"):
        check_api_credentials(settings)
    check_api_credentials(Settings(api_host=host, link_secret="s" * 32))


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert Settings(trusted_proxies="10.0.0.5, 10.1.0.0/16").trusted_proxy_list == [
        "10.0.0.5",
        "10.1.0.0/16",
    ]
    assert Settings().trusted_proxy_list == []
    with pytest.raises(ConfigurationError, match="STAGECOACH_TRUSTED_PROXIES"):
        load_settings(trusted_proxies="10.0.0.5,proxy.internal")


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ("0.5,high", "is not a list of numbers"),
        ("0.8,0.5", "must be increasing"),
        ("0.5,0.5", "must be increasing"),
        ("0,0.5", "each between 0 and 1"),
        ("0.5,1", "each between 0 and 1"),
    ],
)
def test_propensity_bands_are_increasing_edges_inside_0_to_1(bands: str, message: str) -> None:
    assert Settings().propensity_band_edges == (0.2, 0.5, 0.8)
    assert Settings(propensity_signal_bands="").propensity_band_edges == ()
    assert Settings(propensity_signal_bands=" 0.3, 0.7").propensity_band_edges == (0.3, 0.7)
    with pytest.raises(ConfigurationError, match="STAGECOACH_PROPENSITY_SIGNAL_BANDS") as found:
        load_settings(propensity_signal_bands=bands)
    assert message in str(found.value)
    with pytest.raises(ConfigurationError, match="STAGECOACH_PROPENSITY_SIGNAL_STEP"):
        load_settings(propensity_signal_step=0)
