"""What the fake Graph API (:mod:`gateway.testing.fake_graph`) needs from HTTP: one h11
request loop, Graph-style errors, and request bodies as Meta takes them (JSON, form-encoded,
multipart with ``filedata``). Private: :class:`~gateway.testing.fake_graph.FakeGraphServer` is
the public face."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import h11
import trio

from gateway.testing._http import parse_multipart, read_request, send_json

MAX_BODY = 32 << 20

Handler = Callable[
    [trio.SocketStream, h11.Connection, h11.Request, dict[str, str], bytes], Awaitable[None]
]


class GraphError(Exception):
    """Answer with a Graph API error document."""

    def __init__(self, status: int, code: int, message: str, subcode: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.subcode = status, code, message, subcode


class Disconnect(Exception):
    """Close the connection without an answer (the request may have been acted on)."""


async def serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    """Serve keep-alive requests on ``stream``: ``handler`` answers each (headers lower-cased,
    the whole body read); Disconnect or a client that went away ends the connection."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
    try:
        async with stream:
            while (request := await read_request(stream, conn)) is not None:
                try:
                    await handler(stream, conn, *request)
                except Disconnect:
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return


async def send_bytes(
    stream: trio.SocketStream,
    conn: h11.Connection,
    data: bytes | None,
    content_type: str,
    *,
    declare_length: bool = True,
) -> None:
    """``data`` as the answer (404 if None); without Content-Length (chunked) if asked."""
    if data is None:
        await send_json(stream, conn, 404, {"error": "not found"})
        return
    headers = [(b"content-type", content_type.encode())]
    if declare_length:
        headers.append((b"content-length", str(len(data)).encode()))
    out = conn.send(h11.Response(status_code=200, headers=headers))
    for start in range(0, len(data), 65536):
        out += conn.send(h11.Data(data=data[start : start + 65536]))
    await stream.send_all(out + conn.send(h11.EndOfMessage()))


def error_body(code: int | None, message: str, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "fbtrace_id": "AFakeTrace0001",
    }
    if code is not None:
        error["code"] = code
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def body_params(content_type: str, body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            raise GraphError(400, 100, "(#100) Invalid JSON in the request body") from None
        if not isinstance(data, dict):
            raise GraphError(400, 100, "(#100) The request body must be a JSON object")
        return data
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode()))
    if content_type.startswith("multipart/form-data"):
        fields: dict[str, Any] = {}
        for part in parse_multipart(content_type, body).iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True)
            if part.get_filename() is not None:
                fields[str(name)] = (part.get_filename(), data, part.get_content_type())
            else:
                fields[str(name)] = data.decode() if isinstance(data, bytes) else ""
        return fields
    raise GraphError(400, 100, f"(#100) Unsupported content type {content_type!r}")


def object_param(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key)
    if isinstance(value, str):  # form-encoded: the object comes as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise GraphError(400, 100, f"(#100) param {key} must be a JSON object")
    return value


def recorded_attachment(attachment: Any, filedata: Any) -> dict[str, Any] | None:
    if attachment is None:
        return None
    if not isinstance(attachment, dict) or attachment.get("type") not in (
        "image",
        "audio",
        "video",
        "file",
    ):
        raise GraphError(
            400,
            100,
            "(#100) param message[attachment][type] must be one of {image, audio, video, file}",
        )
    payload = attachment.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("url"), str):
        return {"type": attachment["type"], "url": payload["url"]}
    if isinstance(filedata, tuple):
        filename, data, mime = filedata
        return {"type": attachment["type"], "data": data, "mime_type": mime, "filename": filename}
    raise GraphError(400, 100, "(#100) Attachment has neither payload.url nor filedata")
