"""The Max Bot API calls the channel makes, and the HTTP client they go through.

The token travels only in the ``Authorization`` header (Max no longer accepts it in the query,
and httpx's request log shows URLs) and only to ``api_base``; file downloads go without it, to a
``media_hosts`` host only.

TLS: without ``ca_file`` every call uses the daemon's shared client (its outbound allowlist
included). With ``ca_file`` the channel opens its own client whose SSL context trusts the usual
roots (certifi, as httpx does) plus that file, and copies the shared client's request hooks, so
the allowlist still applies; no other connection of the daemon trusts the extra CA. That client
lives while ``run`` runs or a call is in flight (:meth:`MaxApi.session`), and is closed after.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import certifi
import httpx
import trio

from gateway.outbound import media_host_allowed
from gateway.pooling import httpx_transport

from .config import MaxConfig
from .convert import api_error_text

__all__ = ["MaxApi", "MaxApiError", "MediaUnavailable", "tls_context"]

_VIDEO_QUALITIES = ("mp4_720", "mp4_480", "mp4_360", "mp4_1080", "mp4_240", "mp4_144")


class MaxApiError(Exception):
    """Max answered with an HTTP error (its JSON ``code``/``message`` in the text)."""

    def __init__(self, status: int, body: Any, retry_after: str | None = None) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"HTTP {status}: {api_error_text(body)}")


class MediaUnavailable(Exception):
    """An inbound file could not be fetched (the message is kept with the link)."""


def tls_context(ca_file: str) -> ssl.SSLContext:
    """The default roots (certifi's, as httpx uses) plus the CA certificates in ``ca_file``."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_verify_locations(cafile=ca_file)
    return context


class MaxApi:
    def __init__(self, config: MaxConfig, shared: Callable[[], httpx.AsyncClient]) -> None:
        self.config = config
        self._shared = shared
        self._timeout = httpx.Timeout(
            config.request_timeout, connect=min(10.0, config.request_timeout)
        )
        self._own: httpx.AsyncClient | None = None
        self._users = 0

    # -- the client ----------------------------------------------------------------------

    @asynccontextmanager
    async def session(self) -> AsyncIterator[httpx.AsyncClient]:
        """The client for calls to Max, kept open for the block (see the module docstring)."""
        if self.config.ca_file is None:
            yield self._shared()
            return
        if self._own is None:
            shared = self._shared()
            context = tls_context(str(self.config.ca_file))
            self._own = httpx.AsyncClient(
                verify=context,
                transport=httpx_transport(verify=context),
                timeout=self._timeout,
                follow_redirects=False,
                event_hooks=shared.event_hooks,
            )
        client = self._own
        self._users += 1
        try:
            yield client
        finally:
            self._users -= 1
            if self._users == 0 and self._own is client:
                self._own = None
                with trio.CancelScope(shield=True):
                    await client.aclose()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": self.config.token.reveal()}

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        read_timeout: float | None = None,
    ) -> Any:
        """One call; the parsed JSON of a 2xx answer (None if not JSON), MaxApiError for an
        HTTP error, httpx errors for network trouble."""
        limit = self._timeout if read_timeout is None else httpx.Timeout(read_timeout, connect=10.0)
        async with self.session() as http:
            response = await http.request(
                method,
                f"{self.config.api_base}{path}",
                params={k: v for k, v in (params or {}).items() if v is not None},
                json=json,
                headers=self._auth(),
                timeout=limit,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise MaxApiError(response.status_code, body, response.headers.get("retry-after"))
        return body

    # -- methods -------------------------------------------------------------------------

    async def me(self) -> dict[str, Any]:
        """``GET /me``: the bot (``user_id``, ``username``, ``first_name``...)."""
        body = await self.call("GET", "/me")
        if not isinstance(body, dict) or not isinstance(body.get("user_id"), int):
            raise MaxApiError(502, {"message": "GET /me answered without a user_id"})
        return body

    async def updates(
        self, marker: int | None, *, wait: int, types: Sequence[str], limit: int = 100
    ) -> tuple[list[dict[str, Any]], int | None]:
        """``GET /updates``: the updates after ``marker`` (which commits the earlier ones), waiting
        up to ``wait`` seconds for one, and
        the marker of the next page (None if Max gave none)."""
        body = await self.call(
            "GET",
            "/updates",
            params={
                "marker": marker,
                "timeout": wait,
                "limit": limit,
                "types": ",".join(types),
            },
            read_timeout=wait + 15.0,
        )
        if not isinstance(body, dict) or not isinstance(body.get("updates"), list):
            raise MaxApiError(502, {"message": "GET /updates answered without an updates list"})
        updates = [u for u in body["updates"] if isinstance(u, dict)]
        marker_out = body.get("marker")
        return updates, marker_out if isinstance(marker_out, int) else None

    async def send_message(self, chat_id: int, body: Mapping[str, Any]) -> Any:
        """``POST /messages?chat_id=``: the SendMessageResult."""
        return await self.call("POST", "/messages", params={"chat_id": chat_id}, json=dict(body))

    async def answer_callback(self, callback_id: str, notification: str) -> None:
        """``POST /answers?callback_id=``: a one-time notice for the user who pressed."""
        await self.call(
            "POST",
            "/answers",
            params={"callback_id": callback_id},
            json={"notification": notification},
        )

    async def subscriptions(self) -> list[dict[str, Any]]:
        body = await self.call("GET", "/subscriptions")
        found = body.get("subscriptions") if isinstance(body, dict) else None
        return [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []

    async def subscribe(self, url: str, secret: str, types: Sequence[str]) -> None:
        body = await self.call(
            "POST",
            "/subscriptions",
            json={"url": url, "secret": secret, "update_types": list(types)},
        )
        _require_success(body, "POST /subscriptions")

    async def unsubscribe(self, url: str) -> None:
        body = await self.call("DELETE", "/subscriptions", params={"url": url})
        _require_success(body, "DELETE /subscriptions")

    # -- files ---------------------------------------------------------------------------

    async def video_url(self, token: str) -> str | None:
        """A direct mp4 link of a video attachment (``GET /videos/{token}``), or None."""
        body = await self.call("GET", f"/videos/{quote(token, safe='')}")
        urls = body.get("urls") if isinstance(body, dict) else None
        if not isinstance(urls, dict):
            return None
        for quality in _VIDEO_QUALITIES:
            if isinstance(urls.get(quality), str) and urls[quality]:
                return str(urls[quality])
        return None

    async def download(self, url: str) -> tuple[bytes, str | None]:
        """The bytes at ``url`` (no token sent), at most ``max_media_bytes``, and their MIME
        type if the server named one; MediaUnavailable says why not."""
        limit = self.config.max_media_bytes
        if not media_host_allowed(url, self.config.media_hosts):
            raise MediaUnavailable(f"{_host(url)} is not in media_hosts")
        chunks: list[bytes] = []
        total = 0
        try:
            async with self.session() as http:
                async with http.stream("GET", url, timeout=self._timeout) as response:
                    if response.status_code != 200:
                        raise MediaUnavailable(f"download answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise MediaUnavailable(f"{declared} bytes, over max_media_bytes {limit}")
                    async for chunk in response.aiter_bytes():
                        total += len(chunk)
                        if total > limit:
                            raise MediaUnavailable(f"larger than max_media_bytes {limit}")
                        chunks.append(chunk)
                    mime = response.headers.get("content-type", "").split(";")[0].strip()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise MediaUnavailable(f"download failed ({type(exc).__name__})") from exc
        return b"".join(chunks), mime or None


def _host(url: str) -> str:
    try:
        return repr(httpx.URL(url).host)
    except httpx.InvalidURL:
        return "an invalid URL"


def _require_success(body: Any, what: str) -> None:
    """SimpleQueryResult: ``{"success": false, "message": ...}`` is a refusal despite the 200."""
    if isinstance(body, dict) and body.get("success") is False:
        raise MaxApiError(400, {"code": "not.success", "message": f"{what}: {body.get('message')}"})
