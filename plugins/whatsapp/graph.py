"""The few Graph API calls the channel makes, on the daemon's shared httpx client.

The access token travels only in the ``Authorization`` header (never in a URL, so httpx's
request log never shows it) and only to ``api_base`` or a configured media host: a media URL
Meta hands back is checked before the token goes with the download.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from .config import WhatsAppConfig
from .outgoing import graph_error

__all__ = ["Graph", "GraphError", "MediaUnavailable"]

_MEDIA_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")


class GraphError(Exception):
    """The Graph API answered with an error (or something that is not JSON)."""

    def __init__(self, status: int, body: Any, retry_after: str | None = None) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.code, message = graph_error(body)
        super().__init__(f"HTTP {status}: {message or 'no Graph API error in the answer'}")


class MediaUnavailable(Exception):
    """An inbound file could not be fetched (the message is kept without its bytes)."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # "host:99999": no origin anyone configured
        return "", "", None
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port or default


def _covers(rule: tuple[str, str, int | None], url: str) -> bool:
    """Same scheme and port, and the host itself or, for ``*.example.com``, a subdomain."""
    scheme, host, port = _origin(url)
    if not host or (scheme, port) != (rule[0], rule[2]):
        return False
    return host == rule[1] or (rule[1].startswith("*.") and host.endswith(rule[1][1:]))


class Graph:
    def __init__(self, config: WhatsAppConfig, http: Callable[[], httpx.AsyncClient]) -> None:
        self.config = config
        self._http = http
        self.base = f"{config.api_base}/{config.api_version}"
        self._trusted = [_origin(config.api_base), *(_origin(h) for h in config.media_hosts)]
        self._timeout = httpx.Timeout(
            config.request_timeout, connect=min(10.0, config.request_timeout)
        )

    def media_url(self, media_id: str) -> str:
        """Where a media object lives (no token in it): ``Attachment.url`` of inbound files."""
        return f"{self.base}/{media_id}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.access_token.reveal()}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> Any:
        """One call; the parsed JSON of a 2xx answer (None if it is not JSON), GraphError for
        4xx/5xx, httpx errors for network trouble."""
        response = await self._http().request(
            method,
            f"{self.base}/{path}",
            headers=self._auth(),
            json=json,
            params=params,
            data=data,
            files=files,
            timeout=self._timeout,
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise GraphError(response.status_code, body, response.headers.get("retry-after"))
        return body

    async def upload(self, data: bytes, mime_type: str, filename: str) -> str:
        """``POST /{phone-number-id}/media`` (multipart): the new media id."""
        body = await self.call(
            "POST",
            f"{self.config.phone_number_id}/media",
            data={"messaging_product": "whatsapp", "type": mime_type},
            files={"file": (filename, data, mime_type)},
        )
        media_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(media_id, str) or not media_id:
            raise GraphError(502, body)
        return media_id

    async def download(self, media_id: str) -> bytes:
        """``GET /{media-id}`` for its short-lived URL, then the bytes (with the token), at
        most ``max_media_bytes``. MediaUnavailable says why not."""
        limit = self.config.max_media_bytes
        if not _MEDIA_ID.fullmatch(media_id):
            raise MediaUnavailable(f"media id {media_id[:40]!r} is not a Graph object id")
        try:
            info = await self.call(
                "GET", media_id, params={"phone_number_id": self.config.phone_number_id}
            )
        except (GraphError, httpx.HTTPError) as exc:
            raise MediaUnavailable(f"media {media_id}: lookup failed ({exc})") from exc
        url = info.get("url") if isinstance(info, dict) else None
        if not isinstance(url, str) or not url:
            raise MediaUnavailable(f"media {media_id}: Meta gave no download URL")
        if not any(_covers(rule, url) for rule in self._trusted):
            # The token must not go to a host nobody configured (media_hosts).
            raise MediaUnavailable(
                f"media {media_id}: download host {urlsplit(url).hostname!r} is not in media_hosts"
            )
        size = info.get("file_size")
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if isinstance(size, int) and size > limit:
            raise MediaUnavailable(f"media {media_id}: {size} bytes, over max_media_bytes {limit}")
        chunks: list[bytes] = []
        total = 0
        try:
            async with self._http().stream(
                "GET", url, headers=self._auth(), timeout=self._timeout
            ) as response:
                if response.status_code != 200:
                    raise MediaUnavailable(
                        f"media {media_id}: download answered HTTP {response.status_code}"
                    )
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > limit:
                        raise MediaUnavailable(
                            f"media {media_id}: larger than max_media_bytes {limit}"
                        )
                    chunks.append(chunk)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise MediaUnavailable(f"media {media_id}: download failed ({exc!r})") from exc
        return b"".join(chunks)
