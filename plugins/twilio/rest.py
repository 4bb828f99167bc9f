"""The calls this channel makes to Twilio's REST API and media URLs, on the daemon's client."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from .config import TwilioConfig
from .convert import message_matches

__all__ = ["DownloadFailed", "Download", "TwilioRest"]

_MAX_REDIRECTS = 3


class DownloadFailed(Exception):
    """A media or recording download did not give the bytes (the reason is safe to log)."""


@dataclasses.dataclass(frozen=True)
class Download:
    data: bytes
    content_type: str | None


class TwilioRest:
    """Twilio's 2010-04-01 API for one account. Methods raise ``httpx.HTTPError`` on network
    trouble and return the ``httpx.Response`` otherwise, except where noted."""

    def __init__(self, config: TwilioConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self.http = http
        self.account = f"{config.api_base}/2010-04-01/Accounts/{config.account_sid}"
        self._auth = httpx.BasicAuth(config.account_sid, config.auth_token.reveal())
        self._timeout = httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0))
        origin = urlsplit(config.api_base)
        self._origin = (origin.scheme, origin.netloc)
        hosts = [urlsplit(h).hostname for h in config.media_hosts] + [origin.hostname]
        self._media_hosts = {h for h in hosts if h}

    async def create_message(self, form: list[tuple[str, str]]) -> httpx.Response:
        return await self.http.post(
            f"{self.account}/Messages.json",
            data=_form(form),
            auth=self._auth,
            timeout=self._timeout,
        )

    async def fetch_account(self) -> httpx.Response:
        return await self.http.get(f"{self.account}.json", auth=self._auth, timeout=self._timeout)

    async def find_message(
        self,
        *,
        to: str,
        sender: str | None,
        service: str | None,
        body: str,
        since: dt.datetime,
    ) -> str | None:
        """The SID of a message an earlier attempt created (see ``message_matches``), or None.

        Raises ``httpx.HTTPError`` when Twilio cannot be asked, or ``LookupError`` when it
        answers with an error: the caller must then not send (it cannot know).
        """
        query = {"To": to, "DateSent>": since.date().isoformat(), "PageSize": "50"}
        if sender is not None:
            query["From"] = sender
        response = await self.http.get(
            f"{self.account}/Messages.json", params=query, auth=self._auth, timeout=self._timeout
        )
        if response.status_code != 200:
            raise LookupError(f"Twilio answered HTTP {response.status_code} to the lookup")
        try:
            messages = response.json().get("messages")
        except (ValueError, AttributeError):
            raise LookupError("Twilio's message list is not JSON") from None
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, dict) and message_matches(
                message, to=to, sender=sender, service=service, body=body, since=since
            ):
                sid = message.get("sid")
                if isinstance(sid, str) and sid:
                    return sid
        return None

    async def download(self, url: str, *, limit: int) -> Download:
        """GET ``url`` (media or a recording) up to ``limit`` bytes.

        The account credentials go only to api_base's origin (Twilio's media URLs require
        them when "HTTP Basic Auth for media" is on); a redirect is followed only to api_base's
        host or ``media_hosts``, and without credentials.
        """
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not self._media_host(parts.hostname):
                raise DownloadFailed(f"not downloading from {parts.hostname!r} (not a media host)")
            auth = self._auth if (parts.scheme, parts.netloc) == self._origin else None
            try:
                async with self.http.stream(
                    "GET", url, auth=auth, timeout=self._timeout, follow_redirects=False
                ) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise DownloadFailed(f"HTTP {response.status_code}")
                    return await _read_limited(response, limit)
            except httpx.HTTPError as exc:
                raise DownloadFailed(type(exc).__name__) from exc
        raise DownloadFailed("too many redirects")

    def _media_host(self, host: str | None) -> bool:
        """Is ``host`` one of media_hosts (``*.example.com`` matches its subdomains)?"""
        if not host:
            return False
        host = host.lower()
        return any(
            host == rule
            or (rule.startswith("*.") and (host.endswith(rule[1:]) or host == rule[2:]))
            for rule in self._media_hosts
        )


async def _read_limited(response: httpx.Response, limit: int) -> Download:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise DownloadFailed(f"larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise DownloadFailed(f"larger than {limit} bytes")
        chunks.append(chunk)
    content_type = response.headers.get("content-type")
    return Download(b"".join(chunks), content_type.split(";")[0].strip() if content_type else None)


def _form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    # httpx encodes a list value as a repeated field: MediaUrl=..&MediaUrl=.. as Twilio wants.
    form: dict[str, Any] = {}
    for name, value in pairs:
        if name in form:
            previous = form[name]
            form[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            form[name] = value
    return form
