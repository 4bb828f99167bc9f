"""Schemathesis (issue #9) against /api/v1/openapi.json on a live daemon (hypercorn on
127.0.0.1, real store): examples, coverage (every documented status and boundary, missing
headers, undocumented methods) and fuzzing, positive and negative. No 5xx, only documented
statuses, content types, headers and bodies; schema-invalid requests are refused (4xx)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.api.conftest import CONFIG

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
    ]
)
MAX_TIME = int(os.environ.get("GATEWAY_FUZZ_SECONDS", "20"))


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    tmp_path: Path, registry: Any
) -> None:
    from gateway.devapi import keys
    from gateway.testing.daemon import open_gateway

    async with open_gateway(CONFIG, registry, tmp_path) as gw:

        def setup(db: Any) -> str:
            keys.add_project_txn(db, "acme", "Acme Shop", "test")
            return keys.create_key_txn(
                db, "acme", list(keys.SCOPES), rate="100000/s", label=None, actor="t"
            )[1]

        key = await gw.running.store.write("setup", setup)
        await gw.channel("chat").deliver("ann", "ann", "/start acme")
        await gw.wait_idle()
        base = gw.running.public_urls[0]
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{base}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-time",
            str(MAX_TIME),
            "--max-examples",
            "60",
            # One worker: CPython 3.11's ast.parse (used by Hypothesis to describe lambdas) is not
            # thread-safe ("AST constructor recursion depth mismatch" with two).
            "--workers",
            "1",
            "--seed",
            "9",
            "--no-color",
        ]
        result = await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
        )
        output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        report = os.environ.get("GATEWAY_FUZZ_OUTPUT")  # where to keep the whole report
        if report:
            await trio.Path(report).write_text(output)
        assert result.returncode == 0, output[-12000:]
        assert "passed" in output.lower(), output[-4000:]


async def _response(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One HTTP/1.1 response (status line to the end of its Content-Length body)."""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    del buffer[: len(head) + 4 + length]
    return head.split(b"\r\n", 1)[0]


async def test_a_refusal_sent_before_the_body_arrives_keeps_the_connection_usable(
    tmp_path: Path, registry: Any
) -> None:
    """Found by schemathesis: hypercorn (h11) neither reused nor closed a keep-alive connection
    whose request body arrived after the answer, so the client's next request hung."""
    from gateway.testing.daemon import open_gateway

    async with open_gateway(CONFIG, registry, tmp_path) as gw:
        host, port = gw.running.public_urls[0].removeprefix("http://").rsplit(":", 1)
        body = b'{"id": "otp_AAAAAAAAAAAAAAAA", "code": "123456"}'
        for method, content_type in (
            ("POST", "multipart/form-data"),
            ("QUERY", "application/json"),
        ):
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                buffer = bytearray()
                await stream.send_all(
                    f"{method} /api/v1/otp/verify HTTP/1.1\r\nHost: t\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                )
                # The app sees the headers and answers (or waits for the body) before it comes.
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                await stream.send_all(body + b"GET /api/v1/problems HTTP/1.1\r\nHost: t\r\n\r\n")
                with trio.fail_after(5):
                    status = await _response(stream, buffer)
                    assert status.split()[1] in (b"401", b"405", b"415"), status
                    assert (await _response(stream, buffer)).split()[1] == b"200"
