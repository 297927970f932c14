"""Process-wide wiring: config, accounts, pools, state store, HTTP clients, metrics.

Forwarders get one ``GatewayContext`` and nothing global.
"""

from __future__ import annotations

import logging
import os
import time
import weakref

import httpx
from opentelemetry.sdk.trace.export import SpanExporter

from gateway.account_sync import CooldownSync
from gateway.accounts import AccountState, HealthPolicy, Scheduler
from gateway.auth import ClientDirectory
from gateway.config import Account, Config
from gateway.logs import PayloadSampler
from gateway.resolver import COOLDOWN, Resolution, resolve
from gateway.session import SessionRegistry
from gateway.telemetry import Metrics, StoreMetricsHooks
from gateway.tracing import Tracing
from gateway.upstream.dialer import UpstreamDialer
from gateway.upstream.http import HttpClients
from pool import Dialer, PoolConfig, PoolManager
from statestore import StateStore, open_store

log = logging.getLogger("gateway.context")


def pool_config_for(cfg: Config, account: Account | None = None) -> PoolConfig:
    ws = cfg.openai_ws
    return PoolConfig(
        max_conns=account.max_conns if account else 128,
        min_idle=ws.min_idle_per_account,
        max_idle=ws.max_idle_per_account,
        queue_limit=ws.queue_limit,
        acquire_timeout_s=ws.acquire_timeout_s,
        ping_before_lease_idle_s=ws.ping_before_lease_idle_s,
        ping_timeout_s=ws.ping_timeout_s,
        ping_interval_s=ws.ping_interval_s,
        max_age_s=ws.max_conn_age_s,
        maintenance_interval_s=ws.maintenance_interval_s,
        prewarm_cooldown_s=ws.prewarm_cooldown_ms / 1000.0,
    )


def durable_transcripts_on(cfg: Config) -> bool:
    """On by default where another instance can read them (a Redis store)."""
    durable = cfg.statestore.durable_transcripts
    return durable if durable is not None else cfg.statestore.url != "memory://"


def health_policy(cfg: Config) -> HealthPolicy:
    ws = cfg.openai_ws
    return HealthPolicy(
        cooldown_initial_s=ws.cooldown_initial_s,
        cooldown_max_s=ws.cooldown_max_s,
        failure_threshold=ws.account_failure_threshold,
        probe_interval_s=ws.account_probe_interval_s,
    )


def _open_store(cfg: Config, metrics: Metrics) -> StateStore:
    st = cfg.statestore
    return open_store(
        st.url,
        op_timeout_ms=st.op_timeout_ms,
        response_ttl_s=st.response_ttl_s,
        cache_max_entries=st.cache_max_entries,
        key_prefix=st.key_prefix,
        hooks=StoreMetricsHooks(metrics),
        pool_max_connections=st.pool_max_connections,
    )


class TranscriptBudget:
    """Process-wide byte cap for per-socket transcripts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def try_take(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True

    def give_back(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)


class GatewayContext:
    """Everything a forwarder needs. The upstream is injected the way httpx injects a
    transport: ``dialer`` (pooled WebSockets) and ``http_transport`` (HTTP turns) default
    to the real network; tests pass in-process fakes."""

    def __init__(
        self,
        cfg: Config,
        *,
        span_exporter: SpanExporter | None = None,
        dialer: Dialer | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.instance_id = cfg.server.instance_id
        # Under `--workers N` each worker is its own process with its own connection
        # counter: connection ids carry the worker so two workers never mint the same one.
        self.worker_id = worker_identity(self.instance_id)
        self.metrics = Metrics(
            accounts=[a.id for a in cfg.accounts], modes=(cfg.openai_ws.mode, "http")
        )
        self.tracing = Tracing(cfg.telemetry, self.instance_id, exporter=span_exporter)
        self.payload_sampler = PayloadSampler(
            cfg.telemetry.log_payload_sample_rate, cfg.telemetry.log_payload_max_bytes
        )
        self.directory = ClientDirectory(cfg.clients)
        self.accounts: dict[str, Account] = {a.id: a for a in cfg.accounts}
        self.http = HttpClients(
            connect_timeout=cfg.openai_ws.dial_timeout_s,
            read_timeout=cfg.openai_ws.read_timeout_s,
            transport=http_transport,
        )
        self.dialer: Dialer = dialer or UpstreamDialer(
            self.accounts,
            cfg.openai_ws,
            instance_id=self.worker_id,
            max_message_bytes=cfg.server.max_message_bytes,
            tracing=self.tracing,
        )
        self.pools = PoolManager(
            self.dialer,
            pool_config_for(cfg),
            per_account={a.id: pool_config_for(cfg, a) for a in cfg.accounts},
        )
        self.store: StateStore = _open_store(cfg, self.metrics)
        self.registry = SessionRegistry()
        self.transcripts = TranscriptBudget(cfg.openai_ws.transcript_max_bytes_total)
        self.durable_transcripts = durable_transcripts_on(cfg)
        self.scheduler = Scheduler(
            self.accounts,
            policy=health_policy(cfg),
            clock=time.monotonic,
            on_change=self._account_state_changed,
        )
        self.active = self.scheduler.active  # account -> turns/sockets in use
        self.cooldown_sync = self._cooldown_sync(cfg)
        self._cooldown_until: dict[str, float] = {}
        # The config is fixed for the process: each account's transport is decided once;
        # only an HTTP-fallback cooldown changes it for a while.
        self._resolutions = {a.id: resolve(a, cfg.openai_ws) for a in cfg.accounts}
        # Which response each upstream socket holds in its connection-local cache: with
        # store:false only that one can be continued on that socket. Keyed weakly by the
        # socket object, so an entry goes away with the socket the pool dropped.
        self._conn_holds: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
        self.draining = False

    def _cooldown_sync(self, cfg: Config) -> CooldownSync | None:
        """Cooldowns are shared only when the store is (a memory:// store is this process)."""
        if self.store.url_scheme == "memory":
            return None
        sync = CooldownSync(
            self.scheduler, self.store, interval_s=cfg.openai_ws.account_sync_interval_s
        )
        self.scheduler.on_rate_limited = sync.publish
        return sync

    def _account_state_changed(self, account_id: str, state: AccountState) -> None:
        gauge = self.metrics.account_state
        for each in AccountState:
            gauge.labels(account_id, each.value).set(1 if each is state else 0)
        log.info(
            "account %s is %s",
            account_id,
            state.value,
            extra={
                "event": "account_state",
                "account_id": account_id,
                "state": state.value,
                "until_s": self.scheduler.until(account_id),
            },
        )

    # -- upstream socket state -------------------------------------------------------
    def conn_remember(self, conn: object, response_id: str) -> None:
        self._conn_holds[conn] = response_id

    def conn_forget(self, conn: object) -> None:
        self._conn_holds.pop(conn, None)

    def conn_holds(self, conn: object) -> str | None:
        return self._conn_holds.get(conn)

    @property
    def conn_holds_count(self) -> int:
        return len(self._conn_holds)

    def refresh_gauges(self) -> None:
        m = self.metrics
        for account_id, stats in self.pools.stats().items():
            m.pool_size.labels(account_id, "idle").set(stats.idle)
            m.pool_size.labels(account_id, "leased").set(stats.leased)
            m.pool_reuse.labels(account_id).set(stats.reuse_ratio)
        m.sockets_holding_response.set(self.conn_holds_count)

    # -- protocol and account choice -------------------------------------------------
    def cooling_down(self, account_id: str) -> bool:
        until = self._cooldown_until.get(account_id)
        return until is not None and time.monotonic() < until

    def start_cooldown(self, account_id: str) -> None:
        seconds = self.cfg.openai_ws.fallback_cooldown_s
        if seconds > 0:
            self._cooldown_until[account_id] = time.monotonic() + seconds

    def resolution(self, account: Account) -> Resolution:
        known = self._resolutions.get(account.id) or resolve(account, self.cfg.openai_ws)
        if known.transport == "ws" and self._cooldown_until and self.cooling_down(account.id):
            return COOLDOWN
        return known

    def ws_servable(self, group: str) -> bool:
        """Whether a client of ``group`` should get a WebSocket at all (else 426)."""
        return self.ws_unavailable_reason(group) == ""

    def ws_unavailable_reason(self, group: str) -> str:
        """Why a client of ``group`` gets no WebSocket ("" when it does), for the log."""
        ws = self.cfg.openai_ws
        if ws.force_http:
            return "global_force_http"
        if not ws.enabled:
            return "global_disabled"
        if ws.mode == "off":
            return "mode_off"
        reasons = [resolve(a, ws) for a in self.scheduler.group(group)]
        if not reasons:
            return "no_account_in_group"
        if any(r.transport == "ws" for r in reasons):
            return ""
        return ",".join(sorted({r.reason for r in reasons}))

    def ws_capable(self, account: Account) -> bool:
        """Whether the account's turns go over WebSocket now (else HTTP)."""
        return self.resolution(account).transport == "ws"

    def pick_account(self, group: str, *, prefer_ws: bool = True) -> Account | None:
        """Least loaded (by weight) available account of the group, WebSocket-capable
        ones first unless ``prefer_ws`` is off."""
        return self.scheduler.pick(group, usable=self.ws_capable if prefer_ws else None)

    def account_in_group(self, account_id: str | None, group: str) -> Account | None:
        if account_id is None:
            return None
        account = self.accounts.get(account_id)
        if account is None or account.group != group:
            return None
        return account

    async def start(self) -> None:
        self.pools.start()
        if self.cooldown_sync is not None:
            self.cooldown_sync.start()

    async def aclose(self) -> None:
        if self.cooldown_sync is not None:
            await self.cooldown_sync.aclose()
        await self.pools.aclose()
        await self.http.aclose()
        await self.store.aclose()
        self.tracing.shutdown()
        self.metrics.close()


def worker_identity(instance_id: str) -> str:
    """``instance`` alone for a single process; ``instance/w<pid>`` for a worker of many."""
    if os.environ.get("GATEWAY_WORKER_MODE") == "multi":
        return f"{instance_id}/w{os.getpid()}"
    return instance_id
