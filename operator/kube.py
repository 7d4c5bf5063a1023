"""A minimal async Kubernetes API client for the few calls kopf does not make for us (reading
and patching the scaling target).

It logs in exactly as kopf does, through the same login function (kopf's `login_via_client`
in a cluster; a test's own pointing at its mock server), so there is one source of
credentials. A 401 logs in again once (service-account tokens rotate).

`check()` is the operator's start-up test: credentials found and the API server answering,
or one `KubeUnavailable` saying which and where, instead of kopf retrying silently forever.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import kopf

from flashsale.logs import reason

log = logging.getLogger(__name__)

Login = Callable[..., Any]  # (logger=, settings=) -> kopf.ConnectionInfo | None, maybe awaitable


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class KubeUnreachable(KubeError):
    """No answer: a refused or dropped connection, a timeout, a TLS failure (the transport's
    error is the cause). A KubeError, so callers handle it as any failed call."""

    def __init__(self, server: str, cause: BaseException) -> None:
        super().__init__(0, f"no answer from {server} ({reason(cause)})")
        self.server = server

    def __str__(self) -> str:
        return self.message


class KubeUnavailable(Exception):
    """No credentials, or the API server cannot be reached: the message says what to check."""


FIELD_MANAGER = "flashsale-operator"
_AGAIN = object()  # a 401: the token rotated
NO_CREDENTIALS = (
    "no Kubernetes credentials: neither an in-cluster service account nor a kubeconfig "
    "(KUBECONFIG or ~/.kube/config) was found"
)


class Kube:
    """Requests time out after `timeout_s`, or kopf's own request timeout when that is
    shorter (`settings.networking.request_timeout`, the same settings kopf runs with once it
    calls the login handler)."""

    def __init__(
        self,
        login: Login,
        *,
        timeout_s: float = 10.0,
        settings: kopf.OperatorSettings | None = None,
    ) -> None:
        self._login = login
        self._timeout_s = timeout_s
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self.settings = settings or kopf.OperatorSettings()

    async def login(self) -> kopf.ConnectionInfo:
        """Credentials from the login function, called as kopf calls it (kopf's own
        `login_via_client` requires `settings`)."""
        try:
            info = self._login(logger=log, settings=self.settings)
            if inspect.isawaitable(info):
                info = await info
        except kopf.LoginError as error:
            raise KubeError(401, NO_CREDENTIALS) from error
        if not isinstance(info, kopf.ConnectionInfo):
            raise KubeError(401, NO_CREDENTIALS)
        return info

    async def check(self) -> str:
        """The API server's version, once credentials are found and it answers; else
        KubeUnavailable with one line saying which and where."""
        try:
            info = await self.login()
        except KubeError as error:
            raise KubeUnavailable(error.message) from error
        server = info.server
        try:
            version = await self.get("/version")
        except KubeUnreachable as error:
            raise KubeUnavailable(
                f"cannot reach the Kubernetes API at {server} ({reason(error)}); check "
                "KUBECONFIG (outside a cluster) or the pod's network"
            ) from error
        except KubeError as error:
            raise KubeUnavailable(
                f"the Kubernetes API at {server} refused the operator ({error}); check its "
                "credentials (KUBECONFIG or the pod's service account)"
            ) from error
        return str((version or {}).get("gitVersion") or "unknown")

    async def _connect(self, *, again: bool = False) -> tuple[aiohttp.ClientSession, str]:
        if self._session is None or again:
            await self.close()
            self._info = await self.login()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context()),
                headers={**self._info.as_http_headers(), "User-Agent": "flashsale-operator"},
            )
        assert self._info is not None
        return self._session, self._info.server.rstrip("/")

    @property
    def timeout_s(self) -> float:
        kopfs = self.settings.networking.request_timeout
        return min(self._timeout_s, kopfs) if kopfs else self._timeout_s

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> dict[str, Any] | None:
        """The decoded JSON answer; None for 404; KubeError for any other failure
        (KubeUnreachable when nothing answered)."""
        for attempt in (1, 2):
            session, server = await self._connect(again=attempt == 2)
            try:
                answer = await self._send(
                    session, server, method, path, body, content_type, last=attempt == 2
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                raise KubeUnreachable(server, error) from error
            if answer is not _AGAIN:
                return cast("dict[str, Any] | None", answer)
        raise AssertionError("unreachable")

    async def _send(
        self,
        session: aiohttp.ClientSession,
        server: str,
        method: str,
        path: str,
        body: Any,
        content_type: str,
        *,
        last: bool,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with session.request(
            method, server + path, data=data, headers=headers, timeout=timeout
        ) as response:
            if response.status == 401 and not last:
                return _AGAIN  # a rotated token: log in again, once
            if response.status == 404:
                return None
            text = await response.text()
            if response.status >= 400:
                try:
                    message = json.loads(text).get("message") or text
                except (ValueError, AttributeError):
                    message = text
                # logged here once, whatever the caller makes of it: a 403 is an RBAC rule
                # missing from operator/rbac.py, and the tests look for it
                log.warning(
                    "Kubernetes API refused %s %s: HTTP %s: %s",
                    method,
                    path,
                    response.status,
                    message[:500],
                )
                raise KubeError(response.status, message[:500])
            return json.loads(text) if text else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self.request("GET", path)

    async def list(self, path: str) -> list[dict[str, Any]]:
        answer = await self.request("GET", path)
        return list((answer or {}).get("items") or [])

    async def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch (RFC 7386): `None` removes a key. The server records the fields
        as the operator's (FIELD_MANAGER in metadata.managedFields)."""
        return await self.request(
            "PATCH",
            f"{path}?fieldManager={FIELD_MANAGER}",
            body,
            content_type="application/merge-patch+json",
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
