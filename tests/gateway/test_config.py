"""gateway.config: defaults, errors that name the key, *_env secrets, the shipped example."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import msgspec
import pytest

from gateway.config import (
    Account,
    ClientKey,
    Config,
    ConfigError,
    OpenAIWSConfig,
    ServerConfig,
    StateStoreConfig,
    TelemetryConfig,
    example_config_text,
    load_config,
    parse_config,
    ws_url_for,
)
from tests.support import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "gateway.example.toml"
CLIENT = '[[clients]]\nkey = "sk-client"\n'
ACCOUNT = '[[accounts]]\nid = "a"\n'


def complete(text: str) -> str:
    """``text`` plus a client and an account where it has none (a runnable config)."""
    head = ("" if "[[clients]]" in text else CLIENT) + ("" if "[[accounts]]" in text else ACCOUNT)
    return head + text


def test_minimal_config_gives_the_documented_defaults() -> None:
    cfg = parse_config(complete(""), env={})
    assert cfg.openai_ws.enabled is True
    assert cfg.openai_ws.mode == "ctx_pool"
    assert cfg.openai_ws.force_http is False
    assert cfg.statestore.url == "memory://"
    assert cfg.statestore.op_timeout_ms == 150
    assert cfg.statestore.response_ttl_s == 3600
    assert cfg.server.max_message_bytes == 16 * 1024 * 1024
    assert [c.key for c in cfg.clients] == ["sk-client"] and [a.id for a in cfg.accounts] == ["a"]


def test_instance_id_defaults_to_the_hostname() -> None:
    assert parse_config(complete(""), env={}).server.instance_id == socket.gethostname()
    cfg = parse_config(complete('[server]\ninstance_id = "gw-7"\n'), env={})
    assert cfg.server.instance_id == "gw-7"


def test_account_defaults() -> None:
    cfg = parse_config(complete('[[accounts]]\nid = "a"\napi_key = "sk-a"\n'), env={})
    (acct,) = cfg.accounts
    assert acct.group == "default"
    assert acct.auth == "apikey"
    assert acct.base_url == "https://api.openai.com/v1"
    assert acct.max_conns == 128
    assert acct.proxy_url == ""
    assert acct.ws_enabled is None and acct.mode is None  # inherit [openai_ws]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[openai_ws]\nmodee = "ctx_pool"\n', ["modee", "openai_ws"]),
        ("[server]\nport = 1\n", ["port", "server"]),
        ('[[accounts]]\nid = "a"\napi_kye = "x"\n', ["api_kye", "accounts[0]"]),
        ('[[clients]]\nkey = "k"\ngroupp = "g"\n', ["groupp", "clients[0]"]),
        ('[statestore]\nurll = "memory://"\n', ["urll", "statestore"]),
        ('[telemetry]\nlog_lvl = "info"\n', ["log_lvl", "telemetry"]),
        ("colour = 1\n", ["colour"]),
    ],
)
def test_unknown_key_is_an_error_naming_the_key_path(text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(complete(text), env={})
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[openai_ws]\nmode = "turbo"\n', "openai_ws.mode"),
        ('[openai_ws]\nbeta_version = "v3"\n', "openai_ws.beta_version"),
        ('[openai_ws]\nenabled = "yes"\n', "openai_ws.enabled"),
        ("[openai_ws]\nretry_max_attempts = 0\n", "openai_ws.retry_max_attempts"),
        ("[openai_ws]\nretry_jitter_ratio = 1.5\n", "openai_ws.retry_jitter_ratio"),
        ("[openai_ws]\ndial_timeout_s = 0\n", "openai_ws.dial_timeout_s"),
        ("[openai_ws]\nmax_conn_age_s = 7200.0\n", "openai_ws.max_conn_age_s"),
        ("[server]\nmax_message_bytes = -1\n", "server.max_message_bytes"),
        ('[server]\nmax_message_bytes = "16MiB"\n', "server.max_message_bytes"),
        ("[server]\ndrain_close_code = 1000\n", "server.drain_close_code"),
        ("[statestore]\nop_timeout_ms = 0\n", "statestore.op_timeout_ms"),
        ('[telemetry]\nlog_level = "loud"\n', "telemetry.log_level"),
        ('[[accounts]]\nid = "a"\nmax_conns = 0\n', "accounts[0].max_conns"),
        ('[[accounts]]\nid = "a"\nmode = "fast"\n', "accounts[0].mode"),
        ('[[accounts]]\nid = "a"\nauth = "api-key"\n', "accounts[0].auth"),
    ],
)
def test_bad_value_is_an_error_naming_the_key(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(complete(text), env={})
    assert path in str(err.value)


def test_missing_account_id_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(complete('[[accounts]]\napi_key = "k"\n'), env={})
    assert "id" in str(err.value) and "accounts[0]" in str(err.value)


def test_broken_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TOML"):
        parse_config("[openai_ws\n", env={})


def test_env_secrets_are_resolved_from_the_given_env() -> None:
    text = (
        '[[clients]]\nkey_env = "GW_CLIENT"\ngroup = "team"\n'
        '[[accounts]]\nid = "a"\ngroup = "team"\napi_key_env = "UPSTREAM_KEY"\n'
    )
    cfg = parse_config(text, env={"GW_CLIENT": "sk-client", "UPSTREAM_KEY": "sk-upstream"})
    assert cfg.clients[0].key == "sk-client"
    assert cfg.clients[0].group == "team"
    assert cfg.accounts[0].api_key == "sk-upstream"


def test_missing_env_var_is_an_error_naming_key_and_variable() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(complete('[[accounts]]\nid = "a"\napi_key_env = "NOPE_KEY"\n'), env={})
    assert "accounts[0].api_key" in str(err.value) and "NOPE_KEY" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(complete('[[clients]]\nkey_env = "NOPE_CLIENT"\n'), env={"NOPE_CLIENT": ""})
    assert "clients[0].key" in str(err.value) and "NOPE_CLIENT" in str(err.value)


def test_value_and_env_together_is_an_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("accounts[0].api_key")):
        parse_config(
            complete('[[accounts]]\nid = "a"\napi_key = "sk"\napi_key_env = "K"\n'),
            env={"K": "sk2"},
        )
    with pytest.raises(ConfigError, match=re.escape("clients[0].key")):
        parse_config(complete('[[clients]]\nkey = "a"\nkey_env = "K"\n'), env={"K": "b"})


def test_client_without_any_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=re.escape("clients[0].key")):
        parse_config(complete('[[clients]]\ngroup = "g"\n'), env={})


def test_duplicate_account_id_is_rejected() -> None:
    text = '[[accounts]]\nid = "a"\n[[accounts]]\nid = "b"\n[[accounts]]\nid = "a"\n'
    with pytest.raises(ConfigError) as err:
        parse_config(complete(text), env={})
    assert "accounts[2].id" in str(err.value) and "'a'" in str(err.value)


@pytest.mark.parametrize("base_url", ["wss://api.openai.com/v1", "api.openai.com/v1", "ftp://x"])
def test_base_url_scheme_must_be_http_or_https(base_url: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("accounts[0].base_url")):
        parse_config(complete(f'[[accounts]]\nid = "a"\nbase_url = "{base_url}"\n'), env={})


def test_proxy_url_scheme_is_checked() -> None:
    with pytest.raises(ConfigError, match=re.escape("accounts[0].proxy_url")):
        parse_config(complete('[[accounts]]\nid = "a"\nproxy_url = "socks5://p:1080"\n'), env={})
    cfg = parse_config(complete('[[accounts]]\nid = "a"\nproxy_url = "http://p:3128"\n'), env={})
    assert cfg.accounts[0].proxy_url == "http://p:3128"


def test_cross_field_checks_name_the_key() -> None:
    with pytest.raises(ConfigError, match="retry_backoff_max_ms"):
        parse_config(
            complete("[openai_ws]\nretry_backoff_initial_ms = 500\nretry_backoff_max_ms = 100\n"),
            env={},
        )
    with pytest.raises(ConfigError, match="min_idle_per_account"):
        parse_config(
            complete("[openai_ws]\nmin_idle_per_account = 5\nmax_idle_per_account = 2\n"), env={}
        )
    with pytest.raises(ConfigError, match=re.escape("statestore.url")):
        parse_config(complete('[statestore]\nurl = "postgres://db"\n'), env={})


@pytest.mark.parametrize(
    ("base_url", "ws_url"),
    [
        ("https://api.openai.com/v1", "wss://api.openai.com/v1/responses"),
        ("https://api.openai.com/v1/", "wss://api.openai.com/v1/responses"),
        ("http://127.0.0.1:9090/v1", "ws://127.0.0.1:9090/v1/responses"),
        ("https://chatgpt.com/backend-api/codex", "wss://chatgpt.com/backend-api/codex/responses"),
    ],
)
def test_ws_url_for(base_url: str, ws_url: str) -> None:
    assert ws_url_for(base_url) == ws_url


def test_load_config_reads_the_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(complete('[openai_ws]\nmode = "passthrough"\n'))
    assert load_config(good).openai_ws.mode == "passthrough"
    bad = tmp_path / "bad.toml"
    bad.write_text(complete('[openai_ws]\nmode = "nope"\n'))
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(bad) in str(err.value) and "openai_ws.mode" in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_load_config_uses_gateway_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text(complete('[statestore]\nkey_prefix = "from-env"\n'))
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert load_config().statestore.key_prefix == "from-env"


def test_shipped_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.openai_ws.enabled is True
    assert cfg.statestore.url == "memory://"
    assert [a.id for a in cfg.accounts] == ["acct-a"]
    assert cfg.clients[0].key == "sk-local-dev"


def test_shipped_example_shows_the_defaults() -> None:
    """The example says "every key is shown with its default": sections must equal them."""
    cfg = load_config(EXAMPLE)
    assert cfg.openai_ws == OpenAIWSConfig()
    assert cfg.statestore == StateStoreConfig()
    assert cfg.telemetry == TelemetryConfig()
    assert msgspec.structs.replace(cfg.server, instance_id="") == ServerConfig()


@pytest.mark.parametrize(
    "section",
    [Config, ServerConfig, ClientKey, Account, OpenAIWSConfig, StateStoreConfig, TelemetryConfig],
)
def test_every_config_key_is_documented_in_the_example(section: type[msgspec.Struct]) -> None:
    text = EXAMPLE.read_text()
    missing = [
        f.name
        for f in msgspec.structs.fields(section)
        if not re.search(rf"(?<![\w.]){re.escape(f.name)}\b", text)
    ]
    assert missing == [], f"{section.__name__} keys missing from {EXAMPLE.name}: {missing}"


# -- configs that would start and then fail every request --------------------------------
def _error_line(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(text, env=env or {})
    message = str(err.value)
    assert "\n" not in message  # one line for the operator
    return message


def test_empty_config_is_rejected_naming_accounts() -> None:
    assert _error_line("").startswith("accounts:")


def test_config_without_clients_is_rejected() -> None:
    assert _error_line(ACCOUNT).startswith("clients:")


def test_config_without_accounts_is_rejected() -> None:
    assert _error_line(CLIENT).startswith("accounts:")


def test_misspelt_auth_type_is_rejected_naming_the_key() -> None:
    message = _error_line(complete('[[accounts]]\nid = "a"\nauth = "api-key"\n'))
    assert "accounts[0].auth" in message and "'api-key'" in message


def test_http_only_auth_type_is_accepted_and_served_over_http() -> None:
    from gateway.resolver import resolve

    cfg = parse_config(complete('[[accounts]]\nid = "a"\nauth = "http_only"\n'), env={})
    assert resolve(cfg.accounts[0], cfg.openai_ws).transport == "http"


def test_client_group_without_accounts_is_rejected() -> None:
    text = '[[clients]]\nkey = "k"\ngroup = "team"\n' + ACCOUNT
    message = _error_line(text)
    assert message.startswith("clients[0].group:") and "'team'" in message
    assert "default" in message  # names the groups that do exist


def test_duplicate_client_keys_are_rejected() -> None:
    text = '[[clients]]\nkey = "k1"\n[[clients]]\nkey = "k2"\n[[clients]]\nkey = "k1"\n' + ACCOUNT
    message = _error_line(text)
    assert message.startswith("clients[2].key:") and "clients[0]" in message
    assert "k1" not in message  # never echo a secret


def test_duplicate_client_keys_are_found_after_env_resolution() -> None:
    text = '[[clients]]\nkey = "same"\n[[clients]]\nkey_env = "K"\n' + ACCOUNT
    assert _error_line(text, {"K": "same"}).startswith("clients[1].key:")


def test_per_account_mode_other_than_the_gateway_mode_is_rejected() -> None:
    message = _error_line(complete('[[accounts]]\nid = "a"\nmode = "passthrough"\n'))
    assert message.startswith("accounts[0].mode:") and "openai_ws.mode" in message
    cfg = parse_config(complete('[[accounts]]\nid = "a"\nmode = "off"\n'), env={})
    assert cfg.accounts[0].mode == "off"


def test_account_id_with_a_colon_is_rejected() -> None:
    assert _error_line(complete('[[accounts]]\nid = "a:b"\n')).startswith("accounts[0].id:")


def test_per_socket_transcript_cap_above_the_total_is_rejected() -> None:
    text = complete(
        "[openai_ws]\ntranscript_max_bytes_per_socket = 200\ntranscript_max_bytes_total = 100\n"
    )
    assert _error_line(text).startswith("openai_ws.transcript_max_bytes_per_socket:")


def test_statestore_url_from_the_environment() -> None:
    cfg = parse_config(
        complete('[statestore]\nurl_env = "REDIS_URL"\n'),
        env={"REDIS_URL": "redis://:pw@r:6380/0"},
    )
    assert cfg.statestore.url == "redis://:pw@r:6380/0" and cfg.statestore.url_env == ""
    assert _error_line(complete('[statestore]\nurl_env = "REDIS_URL"\n')).startswith(
        "statestore.url:"
    )
    both = complete('[statestore]\nurl = "redis://a"\nurl_env = "REDIS_URL"\n')
    assert _error_line(both, {"REDIS_URL": "redis://b"}).startswith("statestore.url:")


def test_secret_header_values_from_the_environment() -> None:
    text = complete(
        '[[accounts]]\nid = "a"\nextra_headers = {"x-team" = "blue"}\n'
        'extra_headers_env = {"OpenAI-Organization" = "ORG_ID"}\n'
    )
    cfg = parse_config(text, env={"ORG_ID": "org-123"})
    assert cfg.accounts[0].extra_headers == {"x-team": "blue", "OpenAI-Organization": "org-123"}
    assert _error_line(text).startswith("accounts[0].extra_headers_env.OpenAI-Organization:")
    clash = complete(
        '[[accounts]]\nid = "a"\nextra_headers = {"x-org" = "1"}\n'
        'extra_headers_env = {"X-Org" = "ORG_ID"}\n'
    )
    assert _error_line(clash, {"ORG_ID": "2"}).startswith("accounts[0].extra_headers_env.X-Org:")


def test_packaged_example_is_the_default_without_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert load_config() == load_config(EXAMPLE)
    assert EXAMPLE.read_bytes() == example_config_text()


def test_the_example_config_is_package_data() -> None:
    """The wheel carries the example (the default config), not only the repository."""
    import tomllib

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "example.toml" in pyproject["tool"]["setuptools"]["package-data"]["gateway"]
    assert (REPO_ROOT / "gateway" / "example.toml").is_file()
    assert (REPO_ROOT / "deploy" / "gateway.example.toml").resolve() == (
        REPO_ROOT / "gateway" / "example.toml"
    ).resolve()
