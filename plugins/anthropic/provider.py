"""Anthropic's Messages API (Claude) through the official ``anthropic`` SDK.

How the SDK is used, and why (the OpenAI provider's reasons, plus Anthropic's own):

- The ``anthropic`` 2.x SDK is built on ``httpx2``, not the daemon's ``httpx``, so the provider
  lets the SDK make its own client and never hands it ``context.http``. It runs under trio
  through anyio (the client reports ``x-stainless-async: async:trio``).
- ``max_retries=0``: the agent owns retries, backoff and fallbacks.
- ``open_telemetry=False``: otherwise the SDK reads ``ANTHROPIC_OPEN_TELEMETRY*`` from the
  environment, and with ``..._TRACES_CONTENT_MODE=content`` it copies the conversation into
  spans for whatever tracer is registered: a transfer the residency policy and the transfer log
  would never see.
- An explicit ``api_key`` stops the SDK from looking for credentials elsewhere
  (``ANTHROPIC_API_KEY``, profiles on disk, workload identity), and an explicit ``base_url``
  from reading ``ANTHROPIC_BASE_URL``. The SDK sends the key as ``Authorization: Bearer``.
- The client is created on first use and closed in :meth:`AnthropicProvider.aclose`: the SDK's
  ``__del__`` clean-up assumes an asyncio loop.
- No streaming: the agent wants whole answers. (Unlike openai 3.x, anthropic 2.x's
  ``AsyncStream`` reads its event generator to the end and leaves nothing for trio's finalizer;
  ``tests/testing/test_fake_anthropic.py`` checks that under ``filterwarnings=error``.)
- One call is bounded twice: the SDK's ``timeout`` and a trio deadline of ``config.timeout``.
- The SDK logs the whole request body at DEBUG (``anthropic._base_client``: "Request options:
  ..."), which would put the conversation into the journal of a daemon run with debug logs;
  :class:`_HideRequestOptions` drops that one record.
- The Messages API takes the system prompt as a top-level field and wants the turns to start
  with the user and alternate (:func:`anthropic_turns`).
- Error messages name the status, the error type, the request id, the model and the server,
  never conversation content or the key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import trio
from pydantic import Field, field_validator

from gateway.errors import ProviderError
from gateway.messages import ChatMessage, Completion, CompletionRequest
from gateway.plugin import ProviderConfig, ProviderContext
from gateway.pooling import sdk_http_client
from gateway.secretref import Secret
from plugins.openai.provider import cause_name, status_error

if TYPE_CHECKING:
    import anthropic


def _sdk() -> Any:
    """The anthropic SDK, imported when a provider is configured: it costs ~40 MiB of memory, which a gateway
    that merely has this plugin installed (the registry imports every plugin) should not pay."""
    import anthropic

    return anthropic


__all__ = ["AnthropicProvider", "anthropic_turns"]


class _HideRequestOptions(logging.Filter):
    """Drops the SDK's DEBUG record of a request's options: it holds the whole JSON body."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Request options")


_HIDE_REQUEST_OPTIONS = _HideRequestOptions()


def _hide_request_bodies() -> None:
    # On the SDK's own logger (the record is created there), so whatever handlers the daemon
    # configures never see it. Idempotent: one filter however many clients are made.
    sdk_log = logging.getLogger("anthropic._base_client")
    if _HIDE_REQUEST_OPTIONS not in sdk_log.filters:
        sdk_log.addFilter(_HIDE_REQUEST_OPTIONS)


class AnthropicProvider:
    """An LLM provider speaking Anthropic's Messages API. See the module docstring."""

    class Config(ProviderConfig):
        """``[providers.NAME]`` with ``plugin = "anthropic"``."""

        base_url: str = Field(
            "https://api.anthropic.com",
            description="The API root, without /v1 (the SDK adds /v1/messages).",
        )
        api_key: Secret = Field(
            description="A secret reference to the API key (env:ANTHROPIC_API_KEY)."
        )
        model: str = Field(
            min_length=1, description="The model name (claude-sonnet-4-5, claude-haiku-4-5)."
        )
        max_tokens: int = Field(
            1024,
            gt=0,
            description="Upper bound on the answer's tokens; the API requires one (an agent may "
            "ask for fewer).",
        )
        temperature: float | None = Field(
            None,
            ge=0,
            le=1,
            description="Sampling temperature (0 to 1); leave out for the model's default.",
        )

        @field_validator("base_url")
        @classmethod
        def _check_base_url(cls, value: str) -> str:
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError(
                    "must be an http:// or https:// URL such as https://api.anthropic.com"
                )
            value = value.rstrip("/")
            if value.endswith("/v1"):
                raise ValueError(
                    "leave out /v1: the SDK adds /v1/messages (https://api.anthropic.com)"
                )
            return value

    def __init__(self, name: str, config: Any, context: ProviderContext) -> None:
        self.name = name
        self.config: AnthropicProvider.Config = config
        self.context = context
        self._client: anthropic.AsyncAnthropic | None = None
        self._closed = False
        # The SDK is imported here, when a provider is configured, not at the first message:
        # its ~0.5 s import would otherwise stall the event loop (acks included) then.
        _sdk()
        self._server = urlsplit(self.config.base_url).netloc

    def _get_client(self) -> anthropic.AsyncAnthropic:
        if self._closed:
            raise ProviderError(f"provider {self.name!r} is closed", retryable=False)
        if self._client is None:
            _hide_request_bodies()
            self._client = _sdk().AsyncAnthropic(
                base_url=self.config.base_url,
                api_key=self.config.api_key.reveal(),
                max_retries=0,
                timeout=self.config.timeout,
                http_client=sdk_http_client(_sdk()),
                open_telemetry=False,
            )
        return self._client

    async def complete(self, request: CompletionRequest) -> Completion:
        """Send the system prompt and the turns to ``/v1/messages``; map every failure.

        Raises :class:`ProviderError`: retryable for timeouts, connection errors, 408/409, 429
        (with ``retry_after``), 5xx and 529 (overloaded); not retryable for other 4xx, with the
        fix in the message. An empty answer is retryable unless the API says why (max_tokens,
        refusal, context window).
        """
        turns = anthropic_turns(request.messages)
        if not turns:
            raise ProviderError(
                "the conversation has no user message to answer (Anthropic needs one)",
                retryable=False,
            )
        client = self._get_client()
        limits = [n for n in (request.max_tokens, self.config.max_tokens) if n is not None]
        params: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": min(limits),
            "messages": turns,
        }
        if request.system:
            params["system"] = request.system
        if self.config.temperature is not None:
            params["temperature"] = self.config.temperature

        started = time.monotonic()
        sdk = _sdk()
        try:
            with trio.move_on_after(self.config.timeout) as deadline:
                # The SDK's own post() rather than messages.create(), as in the OpenAI
                # provider, though the gap is smaller here: per call with a 12-turn history,
                # create() cost 1.19-1.22 ms of CPU and post() 0.98-1.01 ms (client and
                # in-process fake together, anthropic 2.12, measured here), so create() adds
                # ~0.2 ms (~20%) for its TypedDict transform and model parsing. post() keeps
                # the SDK's HTTP client, auth, headers, timeout and error mapping.
                raw = await client.post("/v1/messages", body=params, cast_to=httpx2.Response)
                data = _parse_message(raw)
        except sdk.APITimeoutError:
            raise self._timeout() from None
        except sdk.APIConnectionError as exc:
            raise ProviderError(
                f"cannot reach {self._server} ({cause_name(exc)}): check base_url and the network",
                retryable=True,
            ) from None
        except sdk.APIStatusError as exc:
            raise self._status_error(exc) from None
        except sdk.AnthropicError as exc:
            raise ProviderError(
                f"{self._server} answered something the Anthropic SDK cannot use "
                f"({type(exc).__name__})",
                retryable=True,
            ) from None
        if deadline.cancelled_caught:
            raise self._timeout()

        self.context.log.debug(
            "provider %s: %s answered in %.2f s",
            self.name,
            self.config.model,
            time.monotonic() - started,
        )
        return self._completion(data)

    def _completion(self, data: dict[str, Any]) -> Completion:
        blocks = data.get("content")
        text = "".join(
            b["text"]
            for b in (blocks if isinstance(blocks, list) else [])
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ).strip()
        if not text:
            reason = data.get("stop_reason")
            reason = reason if isinstance(reason, str) else None
            fatal = {
                "max_tokens": f"model {self.config.model!r} used all max_tokens before "
                "answering: raise max_tokens for this provider",
                "refusal": f"model {self.config.model!r} declined to answer (stop_reason refusal)",
                "model_context_window_exceeded": f"the conversation does not fit model "
                f"{self.config.model!r}'s context window: send fewer history turns",
            }
            if reason in fatal:
                raise ProviderError(fatal[reason], retryable=False)
            raise ProviderError(
                f"model {self.config.model!r} returned an empty answer (stop_reason={reason!r})",
                retryable=True,
            )
        usage = data.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        model = data.get("model")
        return Completion(
            text=text,
            model=model if isinstance(model, str) and model else self.config.model,
            input_tokens=_int_or_none(usage.get("input_tokens")),
            output_tokens=_int_or_none(usage.get("output_tokens")),
        )

    def _timeout(self) -> ProviderError:
        return ProviderError(
            f"{self._server} did not answer within {self.config.timeout:g} s (model "
            f"{self.config.model!r}); raise timeout if the model is slow",
            retryable=True,
        )

    def _status_error(self, exc: anthropic.APIStatusError) -> ProviderError:
        status = exc.status_code
        where = f"{self._server} answered HTTP {status}{_error_detail(exc)}"
        retryable = {
            429: f"rate limited for model {self.config.model!r}",
            529: "Anthropic is overloaded",
        }
        fixes = {
            400: f"the API rejected the request: check model {self.config.model!r}, "
            "temperature (0 to 1) and max_tokens",
            401: "the API refused the key: check api_key",
            402: "the account cannot pay for the call: check billing in the Anthropic Console",
            403: f"the key may not use model {self.config.model!r}: check api_key and the "
            "workspace's model access",
            404: f"model {self.config.model!r} or the API path was not found: check model and "
            "base_url (the API root, without /v1)",
            413: "the request is too large: send fewer history turns",
        }
        return status_error(where, status, exc.response.headers, fixes, retryable)

    async def aclose(self) -> None:
        """Close the SDK's HTTP client. Safe to call twice, and before any call."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def anthropic_turns(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The turns as the Messages API takes them: first from the user, roles alternating.

    - Turns with no text are left out (the API rejects empty text blocks).
    - Consecutive turns of one role (two messages from the user before a reply; a reply sent in
      two parts) become one turn whose content is one text block per message, in order.
    - Leading assistant turns (a greeting the business sent first) are dropped: the API wants
      the user first. Trailing assistant turns are dropped too: the API would take them as a
      prefill to continue, and newer models reject a prefill with a 400.

    Returns an empty list when no user turn is left.
    """
    grouped: list[tuple[str, list[str]]] = []
    for message in messages:
        if not message.content.strip():
            continue
        if grouped and grouped[-1][0] == message.role:
            grouped[-1][1].append(message.content)
        elif grouped or message.role == "user":
            grouped.append((message.role, [message.content]))
    while grouped and grouped[-1][0] == "assistant":
        grouped.pop()
    return [
        {
            "role": role,
            "content": texts[0]
            if len(texts) == 1
            else [{"type": "text", "text": text} for text in texts],
        }
        for role, texts in grouped
    ]


def _parse_message(raw: httpx2.Response) -> dict[str, Any]:
    try:
        data = raw.json()
    except ValueError:
        raise ProviderError(
            f"{raw.url.host} answered with a body that is not JSON (HTTP {raw.status_code})",
            retryable=True,
        ) from None
    if not isinstance(data, dict):
        raise ProviderError(
            f"{raw.url.host} answered with JSON that is not an object", retryable=True
        )
    return data


def _error_detail(exc: anthropic.APIStatusError) -> str:
    """The error type and request id of an Anthropic error, never its free text.

    The request id lets Anthropic's support find the call; the message is left out because it
    may quote the request.
    """
    parts = []
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    if isinstance(kind, str) and kind.replace("_", "").isalnum() and len(kind) <= 60:
        parts.append(f"type={kind}")
    request_id = exc.request_id or (body.get("request_id") if isinstance(body, dict) else None)
    if isinstance(request_id, str) and request_id.replace("_", "").isalnum():
        parts.append(f"request_id={request_id[:80]}")
    return f" ({', '.join(parts)})" if parts else ""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
