"""OpenAI and every OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio) via the SDK.

How the SDK is used, and why:

- The ``openai`` 3.x SDK is built on ``httpx2``, not the ``httpx`` the daemon shares, so the
  provider lets the SDK make its own client (``httpx2.AsyncClient`` with the SDK's defaults) and
  never hands it ``context.http``.
- ``max_retries=0``: the agent owns retries and backoff (it also decides on fallbacks); SDK
  retries underneath would multiply the attempts and hide ``retry-after`` from it.
- The client is created on first use (the constructor does no I/O, and a provider that is never
  asked costs nothing) and closed in :meth:`OpenAIProvider.aclose`: the SDK's ``__del__``
  clean-up schedules ``aclose`` on an asyncio loop, which does not exist under trio.
- One call is bounded twice: the SDK's own ``timeout`` (per network phase) and a trio deadline
  of ``config.timeout`` over the whole call, so a server trickling bytes cannot hold a
  conversation longer than configured.
- Error messages name the status, the model and the server, never conversation content or the
  key: the server's error text is left out because some servers quote the request in it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import time
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import trio
from pydantic import Field, field_validator

from gateway.errors import ProviderError
from gateway.messages import Completion, CompletionRequest
from gateway.plugin import ProviderConfig, ProviderContext
from gateway.pooling import sdk_http_client
from gateway.secretref import Secret

if TYPE_CHECKING:
    import openai


def _sdk() -> Any:
    """The openai SDK, imported when a provider is configured: ~30 MiB of memory that a gateway which merely has
    this plugin installed (the registry imports every plugin) should not pay."""
    import openai

    return openai


__all__ = ["OpenAIProvider"]

# Local servers (Ollama, llama.cpp, vLLM without --api-key) ignore the key, but the SDK insists
# on one; an explicit placeholder also stops it from picking up OPENAI_API_KEY by surprise.
NO_KEY_PLACEHOLDER = "no-key-configured"

_IDENTIFIER = re.compile(r"^[\w.\[\]:-]{1,80}$")


class OpenAIProvider:
    """An LLM provider speaking the OpenAI chat completions API. See the module docstring."""

    class Config(ProviderConfig):
        """``[providers.NAME]`` with ``plugin = "openai"``."""

        base_url: str = Field(
            "https://api.openai.com/v1",
            description=(
                "The API root, ending in /v1. Ollama: http://127.0.0.1:11434/v1, "
                "llama.cpp: http://127.0.0.1:8080/v1, vLLM: http://HOST:8000/v1."
            ),
        )
        api_key: Secret | None = Field(
            None,
            description="A secret reference (env:OPENAI_API_KEY); leave out for local servers without a key.",
        )
        model: str = Field(
            min_length=1, description="The model name the server knows (gpt-4o-mini, llama3.2)."
        )
        temperature: float | None = Field(
            None,
            ge=0,
            le=2,
            description="Sampling temperature; leave out for the server's default.",
        )
        max_tokens: int | None = Field(
            None,
            gt=0,
            description=(
                "Upper bound on the answer's tokens (an agent may ask for fewer). Sent as "
                "max_completion_tokens to api.openai.com and as max_tokens to other servers."
            ),
        )

        @field_validator("base_url")
        @classmethod
        def _check_base_url(cls, value: str) -> str:
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError(
                    "must be an http:// or https:// URL such as http://127.0.0.1:11434/v1"
                )
            return value.rstrip("/")

    def __init__(self, name: str, config: Any, context: ProviderContext) -> None:
        self.name = name
        self.config: OpenAIProvider.Config = config
        self.context = context
        self._client: openai.AsyncOpenAI | None = None
        self._closed = False
        # The SDK is imported here, when a provider is configured, not at the first message:
        # its ~0.5 s import would otherwise stall the event loop (acks included) then.
        _sdk()
        host = urlsplit(self.config.base_url).hostname or ""
        self._server = urlsplit(self.config.base_url).netloc
        self._limit_param = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._closed:
            raise ProviderError(f"provider {self.name!r} is closed", retryable=False)
        if self._client is None:
            key = self.config.api_key.reveal() if self.config.api_key else NO_KEY_PLACEHOLDER
            self._client = _sdk().AsyncOpenAI(
                base_url=self.config.base_url,
                api_key=key,
                max_retries=0,
                timeout=self.config.timeout,
                http_client=sdk_http_client(_sdk()),
            )
        return self._client

    async def complete(self, request: CompletionRequest) -> Completion:
        """Send the system prompt and the turns to ``chat.completions``; map every failure.

        Raises :class:`ProviderError`: retryable for timeouts, connection errors, 408/409, 429
        (with ``retry_after``) and 5xx; not retryable for other 4xx, with the fix in the message.
        An empty answer is retryable unless the server says why (length, content filter).
        """
        client = self._get_client()
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        params: dict[str, Any] = {"model": self.config.model, "messages": messages}
        if self.config.temperature is not None:
            params["temperature"] = self.config.temperature
        limits = [n for n in (request.max_tokens, self.config.max_tokens) if n is not None]
        if limits:
            params[self._limit_param] = min(limits)

        started = time.monotonic()
        sdk = _sdk()
        try:
            with trio.move_on_after(self.config.timeout) as deadline:
                # The SDK's own post() rather than chat.completions.create(): create() walks
                # the params through its TypedDict transform, ~2 ms of CPU per call with a
                # 12-turn history (3.15 ms against 0.90 ms, measured here), which halved the
                # gateway's throughput. post() keeps the SDK's HTTP client, auth, timeout and
                # error mapping (APIStatusError & co. below); we read the JSON ourselves.
                raw = await client.post("/chat/completions", body=params, cast_to=httpx2.Response)
                response = _parse_completion(raw)
        except sdk.APITimeoutError:
            raise self._timeout() from None
        except sdk.APIConnectionError as exc:
            raise ProviderError(
                f"cannot reach {self._server} ({cause_name(exc)}): check base_url and that "
                "the server is running",
                retryable=True,
            ) from None
        except sdk.APIStatusError as exc:
            raise self._status_error(exc) from None
        except sdk.OpenAIError as exc:
            raise ProviderError(
                f"{self._server} answered something the OpenAI SDK cannot use ({type(exc).__name__})",
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
        return self._completion(response)

    def _completion(self, response: Any) -> Completion:
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise ProviderError(
                f"{self._server} returned no choices for model {self.config.model!r}",
                retryable=True,
            )
        choice = choices[0]
        text = (choice.message.content or "").strip() if choice.message else ""
        if not text:
            # Decision: an empty answer is usually a sampling glitch and worth one more try;
            # but "length" (a reasoning model spent max_tokens thinking) and "content_filter"
            # would come back the same way, so those go to the fallback text at once.
            reason = choice.finish_reason
            if reason == "length":
                raise ProviderError(
                    f"model {self.config.model!r} used all max_tokens before answering: raise "
                    "max_tokens for this provider",
                    retryable=False,
                )
            if reason == "content_filter":
                raise ProviderError(
                    f"model {self.config.model!r} withheld its answer (content filter)",
                    retryable=False,
                )
            raise ProviderError(
                f"model {self.config.model!r} returned an empty answer (finish_reason={reason!r})",
                retryable=True,
            )
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            model=getattr(response, "model", None) or self.config.model,
            input_tokens=getattr(usage, "prompt_tokens", None),
            output_tokens=getattr(usage, "completion_tokens", None),
        )

    def _timeout(self) -> ProviderError:
        return ProviderError(
            f"{self._server} did not answer within {self.config.timeout:g} s (model "
            f"{self.config.model!r}); raise timeout if the model is slow",
            retryable=True,
        )

    def _status_error(self, exc: openai.APIStatusError) -> ProviderError:
        status = exc.status_code
        detail = _error_detail(exc.body)
        where = f"{self._server} answered HTTP {status}{detail}"
        retryable = {429: f"rate limited or out of quota for model {self.config.model!r}"}
        fixes = {
            400: f"the server rejected the request: check model {self.config.model!r}, "
            "temperature and max_tokens for this server",
            401: "the server refused the key: check api_key",
            403: f"the key may not use model {self.config.model!r}: check api_key and the "
            "project's model access",
            404: f"model {self.config.model!r} or the API path was not found: check model and "
            "base_url (OpenAI-compatible servers usually end in /v1)",
            413: "the request is too large: send fewer history turns",
            422: f"the server rejected the request: check model {self.config.model!r}, "
            "temperature and max_tokens for this server",
        }
        return status_error(where, status, exc.response.headers, fixes, retryable)

    async def check(self) -> str:
        """For ``gateway doctor``: ``GET /models`` within 10 s, no tokens spent.

        Returns a summary; raises ProviderError when the server cannot be reached or refuses
        the key, UserWarning when it answers but does not list the configured model.
        """
        client = self._get_client()
        sdk = _sdk()
        try:
            with trio.move_on_after(10) as deadline:
                raw = await client.get("/models", cast_to=httpx2.Response)
        except sdk.APIConnectionError as exc:
            raise ProviderError(
                f"cannot reach {self._server} ({cause_name(exc)}): check base_url and that "
                "the server is running",
                retryable=True,
            ) from None
        except sdk.APIStatusError as exc:
            if exc.status_code == 404:
                raise UserWarning(
                    f"{self._server} answers but has no /models to list; model "
                    f"{self.config.model!r} is not confirmed"
                ) from None
            raise self._status_error(exc) from None
        if deadline.cancelled_caught:
            raise ProviderError(f"{self._server} did not answer within 10 s", retryable=True)
        try:
            data = raw.json().get("data") or []
            models = sorted(str(m.get("id")) for m in data if isinstance(m, dict))
        except (ValueError, AttributeError):
            raise UserWarning(f"{self._server} answered /models with something else") from None
        if self.config.model not in models:
            listed = ", ".join(models[:5]) + (" ..." if len(models) > 5 else "")
            raise UserWarning(
                f"{self._server} answers, but does not list model {self.config.model!r} "
                f"(it lists: {listed or 'nothing'}): check model"
            )
        return f"{self._server} answers, model {self.config.model!r} available"

    async def aclose(self) -> None:
        """Close the SDK's HTTP client. Safe to call twice, and before any call."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def cause_name(exc: BaseException) -> str:
    """The low-level error behind an SDK's connection error (ConnectError, ReadTimeout...)."""
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if cause is not None else type(exc).__name__


def _error_detail(body: object) -> str:
    """The identifiers of an OpenAI error body (code, type, param), never its free text."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        return ""
    parts = [
        f"{key}={body[key]}"
        for key in ("code", "type", "param")
        if isinstance(body.get(key), str) and _IDENTIFIER.match(body[key])
    ]
    return f" ({', '.join(parts)})" if parts else ""


def status_error(
    where: str,
    status: int,
    headers: Any,
    fixes: Mapping[int, str],
    retryable: Mapping[int, str],
) -> ProviderError:
    """A model API's HTTP error as a ProviderError (shared by the OpenAI and Anthropic plugins).

    408, 409, 429, the statuses in ``retryable`` and every 5xx are worth another try, after the
    server's retry-after if it sent one; any other status is final and says what to fix.
    """
    if status in retryable or status >= 500 or status in (408, 409, 429):
        text = retryable.get(status, "server-side failure")
        return ProviderError(
            f"{where}: {text}", retryable=True, retry_after=parse_retry_after(headers)
        )
    fix = fixes.get(status, "check the provider's configuration")
    return ProviderError(f"{where}: {fix}", retryable=False)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), else None."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _parse_completion(raw: httpx2.Response) -> Any:
    """The chat completion body as nested attribute objects, like the SDK's models."""
    try:
        data = raw.json(object_hook=lambda d: types.SimpleNamespace(**d))
    except ValueError:
        raise ProviderError(
            f"{raw.url.host} answered with a body that is not JSON (HTTP {raw.status_code})",
            retryable=True,
        ) from None
    if not isinstance(data, types.SimpleNamespace):
        raise ProviderError(
            f"{raw.url.host} answered with JSON that is not an object", retryable=True
        )
    choices = getattr(data, "choices", None)
    if not isinstance(choices, list) or not all(
        isinstance(c, types.SimpleNamespace) for c in choices
    ):
        data.choices = []
    for choice in data.choices:
        message = getattr(choice, "message", None)
        if not isinstance(message, types.SimpleNamespace):
            choice.message = None
        elif not isinstance(getattr(message, "content", None), str):
            message.content = None
        if not hasattr(choice, "finish_reason"):
            choice.finish_reason = None
    return data
