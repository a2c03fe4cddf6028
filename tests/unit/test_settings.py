"""One configuration mechanism: environment variables read by pydantic-settings models, defaults in the fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnsense.environment import OFFLINE, QUIET, Paths, paths, set_defaults
from churnsense.errors import UserError
from serving.settings import ServingSettings


def test_service_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNSENSE_MAX_EVENTS", "12")
    monkeypatch.setenv("CHURNSENSE_LOG_TEXT", "true")
    monkeypatch.setenv("CHURNSENSE_SENTIMENT_BATCHING", "bentoml")
    monkeypatch.setenv("CHURNSENSE_TOP_REASONS", "")  # blank counts as unset
    settings = ServingSettings.from_env()
    assert settings.max_events == 12 and settings.log_text is True
    assert settings.sentiment_batching == "bentoml"
    assert settings.top_reasons == ServingSettings.model_fields["top_reasons"].default
    with pytest.raises(ValueError):  # frozen: one value per process
        settings.max_events = 3  # type: ignore[misc]


def test_service_defaults_log_no_customer_text(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServingSettings.model_fields:
        monkeypatch.delenv("CHURNSENSE_" + name.upper(), raising=False)
    assert ServingSettings.from_env().log_text is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHURNSENSE_MAX_EVENTS", "many"),
        ("CHURNSENSE_MAX_EVENTS", "0"),
        ("CHURNSENSE_SENTIMENT_BATCHING", "gpu"),
    ],
)
def test_a_bad_service_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=name):
        ServingSettings.from_env()


def test_paths_follow_the_environment_each_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CHURNSENSE_CACHE_DIR", raising=False)
    monkeypatch.delenv("CHURNSENSE_ARTIFACT_ROOT", raising=False)
    assert paths().cache_dir == Path.home() / ".cache" / "churnsense"
    assert paths().artifact_root is None
    monkeypatch.setenv("CHURNSENSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CHURNSENSE_ARTIFACT_ROOT", str(tmp_path / "runs"))
    assert paths() == Paths(cache_dir=tmp_path / "cache", artifact_root=tmp_path / "runs")


def test_defaults_never_override_what_the_user_exported() -> None:
    environ = {"HF_HUB_OFFLINE": "0"}
    set_defaults(QUIET, OFFLINE, environ=environ)
    assert environ["HF_HUB_OFFLINE"] == "0"  # a deliberate choice stays
    assert environ["TRANSFORMERS_OFFLINE"] == "1"
    assert all(environ[name] == value for name, value in QUIET.items())


def test_the_bento_carries_the_servers_environment_and_exact_versions() -> None:
    from importlib.metadata import version

    import yaml

    from churnsense.environment import SERVER
    from serving.build import BENTOFILE, pinned_bentofile

    built = yaml.safe_load(pinned_bentofile(BENTOFILE))
    assert {item["name"]: item["value"] for item in built["envs"]} == dict(SERVER)
    packages = built["python"]["packages"]
    assert f"pydantic-settings=={version('pydantic-settings')}" in packages  # serving.settings needs it
    assert f"torch=={version('torch')}" in packages
    assert all("==" in requirement for requirement in packages)
