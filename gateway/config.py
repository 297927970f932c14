"""Gateway configuration: TOML decoded into msgspec Structs.

Unknown keys, bad values and configs that could only fail later (a client group with no
account, duplicate client keys, no clients or no accounts) are startup errors whose one
line names the key (msgspec reports the path, e.g. ``$.openai_ws.mode``). Secrets may come
from the environment through ``*_env`` keys, resolved once at load time.
"""

from __future__ import annotations

import os
import socket
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from statestore import store_url_problem

# The example config ships inside the package and is what runs when no path is given.
EXAMPLE_CONFIG_RESOURCE = "example.toml"
MIB = 1024 * 1024

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Mode = Literal["ctx_pool", "passthrough", "off"]
# "http_only" names an upstream auth type without WebSocket support: served over HTTP.
AuthType = Literal["apikey", "oauth", "http_only"]


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    instance_id: str = ""
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024, le=256 * MIB)] = 16 * MIB
    # Ingress WebSocket implementation for uvicorn; measured choice documented in README.
    ws_impl: Literal["websockets-sansio", "websockets", "wsproto"] = "websockets-sansio"
    first_message_timeout_s: PositiveFloat = 300.0
    client_idle_timeout_s: PositiveFloat = 3600.0
    drain_timeout_s: NonNegFloat = 30.0
    drain_close_code: Literal[1001, 1012] = 1012
    trust_forwarded_headers: bool = False
    # Hostile-client limits: a whole upgrade request (bytes and the app's answer) must
    # finish within handshake_timeout_s; at most max_pending_handshakes connections per
    # process may be mid-handshake (not yet authenticated); a request header section
    # over max_header_bytes is answered 431 and closed.
    handshake_timeout_s: PositiveFloat = 5.0
    max_pending_handshakes: PositiveInt = 2048
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=MIB)] = 64 * 1024
    max_sockets_per_client_key: PositiveInt = 4096
    # Key for the read-only operator endpoints (/admin/...); empty: they do not exist.
    admin_key: str = ""
    admin_key_env: str = ""


class ClientKey(_Section):
    key: str = ""
    key_env: str = ""
    group: str = "default"
    name: str = ""


class Account(_Section):
    id: str
    group: str = "default"
    auth: AuthType = "apikey"
    api_key: str = ""
    api_key_env: str = ""
    base_url: str = "https://api.openai.com/v1"
    proxy_url: str = ""
    max_conns: PositiveInt = 128
    weight: PositiveInt = 1
    # Per-account switches; None means "inherit the [openai_ws] value". The forwarding
    # mode is chosen per gateway, so an account may only turn it "off" (HTTP only).
    ws_enabled: bool | None = None
    mode: Mode | None = None
    force_http: bool = False
    extra_headers: dict[str, str] = {}
    # Header name -> environment variable holding its value (for secret headers).
    extra_headers_env: dict[str, str] = {}


class OpenAIWSConfig(_Section):
    enabled: bool = True
    mode: Mode = "ctx_pool"
    force_http: bool = False
    apikey_enabled: bool = True
    oauth_enabled: bool = True
    beta_version: Literal["v1", "v2"] = "v2"
    dial_timeout_s: PositiveFloat = 10.0
    read_timeout_s: PositiveFloat = 900.0
    liveness_interval_s: NonNegFloat = 10.0
    write_timeout_s: PositiveFloat = 120.0
    min_idle_per_account: NonNegInt = 0
    max_idle_per_account: NonNegInt = 12
    queue_limit: PositiveInt = 256
    acquire_timeout_s: PositiveFloat = 12.0
    ping_before_lease_idle_s: PositiveFloat = 20.0
    ping_interval_s: PositiveFloat = 30.0
    ping_timeout_s: PositiveFloat = 2.0
    max_conn_age_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 3300.0
    maintenance_interval_s: PositiveFloat = 5.0
    prewarm_cooldown_ms: NonNegInt = 300
    retry_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 4
    retry_backoff_initial_ms: NonNegInt = 120
    retry_backoff_max_ms: NonNegInt = 2000
    retry_jitter_ratio: Ratio = 0.2
    retry_total_budget_ms: NonNegInt = 5000
    fallback_cooldown_s: NonNegFloat = 30.0
    cooldown_initial_s: PositiveFloat = 1.0
    cooldown_max_s: PositiveFloat = 300.0
    account_failure_threshold: PositiveInt = 5
    account_probe_interval_s: PositiveFloat = 10.0
    account_sync_interval_s: PositiveFloat = 1.0
    recovery_enabled: bool = True
    transcript_max_bytes_per_socket: PositiveInt = 64 * MIB
    transcript_max_bytes_total: PositiveInt = 2048 * MIB


class StateStoreConfig(_Section):
    url: str = "memory://"
    url_env: str = ""  # environment variable holding the URL (it may carry a password)
    op_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 150
    response_ttl_s: PositiveInt = 3600
    cache_max_entries: PositiveInt = 65536
    key_prefix: str = "rwg"
    pool_max_connections: PositiveInt = 64
    # Durable transcripts: None = on with a Redis store, off with memory://.
    durable_transcripts: bool | None = None
    durable_transcript_max_bytes: PositiveInt = 8 * MIB


class TelemetryConfig(_Section):
    service_name: str = "responses-ws-gateway"
    otlp_endpoint: str = ""
    tracing_enabled: bool = True
    metrics_enabled: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    log_payload_sample_rate: Ratio = 0.0
    log_payload_max_bytes: NonNegInt = 2048


class Config(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    clients: list[ClientKey] = []
    accounts: list[Account] = []
    openai_ws: OpenAIWSConfig = msgspec.field(default_factory=OpenAIWSConfig)
    statestore: StateStoreConfig = msgspec.field(default_factory=StateStoreConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)


def _resolve_secret(value: str, env_name: str, where: str, env: dict[str, str]) -> str:
    if value and env_name:
        raise ConfigError(f"{where}: set either the value or its *_env key, not both")
    if env_name:
        secret = env.get(env_name, "")
        if not secret:
            raise ConfigError(f"{where}: environment variable {env_name!r} is empty or unset")
        return secret
    return value


def _check_clients(cfg: Config, env: dict[str, str]) -> list[ClientKey]:
    if not cfg.clients:
        raise ConfigError("clients: at least one [[clients]] key is required")
    groups = {a.group for a in cfg.accounts}
    first_index: dict[str, int] = {}
    clients: list[ClientKey] = []
    for i, client in enumerate(cfg.clients):
        key = _resolve_secret(client.key, client.key_env, f"clients[{i}].key", env)
        if not key:
            raise ConfigError(f"clients[{i}].key: a client key (or key_env) is required")
        if key in first_index:
            raise ConfigError(
                f"clients[{i}].key: duplicate client key (same as clients[{first_index[key]}])"
            )
        first_index[key] = i
        if client.group not in groups:
            raise ConfigError(
                f"clients[{i}].group: no account has group {client.group!r}"
                f" (account groups: {', '.join(sorted(groups)) or 'none'})"
            )
        clients.append(msgspec.structs.replace(client, key=key, key_env=""))
    return clients


def _check_account(i: int, acct: Account, ws: OpenAIWSConfig, env: dict[str, str]) -> Account:
    where = f"accounts[{i}]"
    if not acct.id:
        raise ConfigError(f"{where}.id: must not be empty")
    if ":" in acct.id:
        raise ConfigError(f"{where}.id: must not contain ':' (it is part of connection ids)")
    api_key = _resolve_secret(acct.api_key, acct.api_key_env, f"{where}.api_key", env)
    if not acct.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url: must start with http:// or https://")
    if acct.proxy_url and not acct.proxy_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.proxy_url: only http:// and https:// proxies are supported")
    if acct.mode not in (None, "off", ws.mode):
        raise ConfigError(
            f"{where}.mode: {acct.mode!r} differs from openai_ws.mode {ws.mode!r}; the"
            ' forwarding mode is per gateway, an account can only set "off" (HTTP only)'
        )
    headers = dict(acct.extra_headers)
    for name, env_name in acct.extra_headers_env.items():
        if name.lower() in {h.lower() for h in headers}:
            raise ConfigError(
                f"{where}.extra_headers_env.{name}: also set in extra_headers; pick one"
            )
        headers[name] = _resolve_secret("", env_name, f"{where}.extra_headers_env.{name}", env)
    return msgspec.structs.replace(
        acct, api_key=api_key, api_key_env="", extra_headers=headers, extra_headers_env={}
    )


def _validate(cfg: Config, env: dict[str, str]) -> Config:
    if not cfg.accounts:
        raise ConfigError("accounts: at least one [[accounts]] entry is required")
    accounts: list[Account] = []
    seen: set[str] = set()
    for i, acct in enumerate(cfg.accounts):
        if acct.id in seen:
            raise ConfigError(f"accounts[{i}].id: duplicate account id {acct.id!r}")
        seen.add(acct.id)
        accounts.append(_check_account(i, acct, cfg.openai_ws, env))
    clients = _check_clients(cfg, env)
    ws = cfg.openai_ws
    if ws.retry_backoff_max_ms < ws.retry_backoff_initial_ms:
        raise ConfigError("openai_ws.retry_backoff_max_ms: must be >= retry_backoff_initial_ms")
    if ws.min_idle_per_account > ws.max_idle_per_account:
        raise ConfigError("openai_ws.min_idle_per_account: must be <= max_idle_per_account")
    if ws.transcript_max_bytes_per_socket > ws.transcript_max_bytes_total:
        raise ConfigError(
            "openai_ws.transcript_max_bytes_per_socket: must be <= transcript_max_bytes_total"
        )
    store = cfg.statestore
    url = _resolve_secret(
        "" if store.url == "memory://" and store.url_env else store.url,
        store.url_env,
        "statestore.url",
        env,
    )
    if (problem := store_url_problem(url)) is not None:
        raise ConfigError(f"statestore.url: {problem}")
    store = msgspec.structs.replace(store, url=url, url_env="")
    server = cfg.server
    if not server.instance_id:
        server = msgspec.structs.replace(server, instance_id=socket.gethostname())
    if any(c in server.instance_id for c in ": "):
        raise ConfigError("server.instance_id: must not contain ':' or spaces")
    admin_key = _resolve_secret(server.admin_key, server.admin_key_env, "server.admin_key", env)
    if admin_key and any(c.key == admin_key for c in clients):
        raise ConfigError("server.admin_key: must differ from every client key")
    server = msgspec.structs.replace(server, admin_key=admin_key, admin_key_env="")
    return msgspec.structs.replace(
        cfg, clients=clients, accounts=accounts, server=server, statestore=store
    )


def parse_config(text: str | bytes, env: dict[str, str] | None = None) -> Config:
    """Decode and validate TOML text; raises ConfigError naming the bad key."""
    try:
        cfg = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    return _validate(cfg, dict(os.environ) if env is None else env)


def example_config_text() -> bytes:
    """The example config shipped inside the package (the default config)."""
    return resources.files("gateway").joinpath(EXAMPLE_CONFIG_RESOURCE).read_bytes()


def config_source(path: str | os.PathLike[str] | None = None) -> str:
    """Which config is used: ``path``, else ``GATEWAY_CONFIG``, else the packaged example."""
    return str(path or os.environ.get("GATEWAY_CONFIG") or "")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the file named by ``path``, else ``GATEWAY_CONFIG``, else the packaged example."""
    source = config_source(path)
    if not source:
        try:
            return parse_config(example_config_text())
        except ConfigError as exc:
            raise ConfigError(f"packaged example config: {exc}") from None
    try:
        text = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source!r}: {exc.strerror}") from None
    try:
        return parse_config(text)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def ws_url_for(base_url: str) -> str:
    """Upstream WebSocket URL: https->wss, http->ws, plus /responses (as Codex derives it)."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/responses"
