"""The pool's Dialer for real upstream sockets.

Pooled sockets are dialed with account headers; when a dial happens inline for a turn,
that turn's forwardable Codex headers (session, thread and request ids) ride along
through a context variable.
"""

from __future__ import annotations

import itertools
from contextvars import ContextVar

from gateway.config import Account, OpenAIWSConfig, ws_url_for
from gateway.resolver import BETA_V1, BETA_V2
from gateway.tracing import Tracing, mark_error
from gateway.upstream.headers import account_headers
from gateway.upstream.ws import UpstreamWS, connect

turn_headers: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("turn_headers", default=())


class UpstreamDialer:
    def __init__(
        self,
        accounts: dict[str, Account],
        ws_config: OpenAIWSConfig,
        *,
        instance_id: str,
        max_message_bytes: int,
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing
        self._accounts = accounts
        self._ws = ws_config
        self._instance = instance_id
        self._max = max_message_bytes
        self._seq = itertools.count(1)
        self._beta = BETA_V1 if ws_config.beta_version == "v1" else BETA_V2
        self.dials = 0
        self.failures = 0

    async def dial(self, account_id: str) -> UpstreamWS:
        account = self._accounts[account_id]
        headers = account_headers(account, self._beta)
        seen = {name for name, _ in headers}
        headers.extend((k, v) for k, v in turn_headers.get() if k not in seen)
        conn_id = f"{self._instance}:{account_id}:{next(self._seq)}"
        self.dials += 1
        tracing = self._tracing
        if tracing is None or not tracing.enabled:
            return await self._connect(account, headers, conn_id)
        with tracing.child("upstream.dial", **{"gateway.account": account_id}) as span:
            try:
                return await self._connect(account, headers, conn_id)
            except Exception as exc:
                mark_error(span, str(exc))
                raise

    async def _connect(
        self, account: Account, headers: list[tuple[str, str]], conn_id: str
    ) -> UpstreamWS:
        try:
            return await connect(
                ws_url_for(account.base_url),
                headers,
                conn_id=conn_id,
                max_message_bytes=self._max,
                timeout=self._ws.dial_timeout_s,
                proxy_url=account.proxy_url,
            )
        except Exception:
            self.failures += 1
            raise
