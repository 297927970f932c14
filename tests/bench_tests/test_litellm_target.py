"""LiteLLM as a bench target, without LiteLLM: what the harness says when it is missing,
and the proxy config it would run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import litellm_target


def test_a_missing_venv_is_not_installed_and_nothing_is_installed_unasked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(litellm_target, "VENV", tmp_path / ".venv-litellm")
    info = litellm_target.prepare(install=False)
    assert info["status"] == "not installed" and info["version"] is None
    assert not (tmp_path / ".venv-litellm").exists()


def test_the_proxy_routes_one_model_to_the_simulator_with_nothing_recorded() -> None:
    config = litellm_target.proxy_config("http://127.0.0.1:9/v1", "sk-master")
    (model,) = config["model_list"]
    assert model["model_name"] == "bench"
    assert model["litellm_params"]["model"] == "openai/bench"
    assert model["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1"
    general = config["general_settings"]
    assert general["master_key"] == "sk-master"
    assert "database_url" not in general  # no database: no spend tracking
    assert general["disable_spend_logs"] is True
    settings = config["litellm_settings"]
    assert settings["callbacks"] == settings["success_callback"] == []


def test_the_settings_the_report_names_are_the_ones_written() -> None:
    described = litellm_target.settings()
    assert '"disable_spend_logs": true' in described["general_settings"]
    assert '"turn_off_message_logging": true' in described["litellm_settings"]
    assert "sk-" not in described["general_settings"]  # the key is not recorded
    assert '"LITELLM_LOG": "ERROR"' in described["environment"]
