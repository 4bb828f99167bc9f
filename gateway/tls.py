"""PUBLIC: a channel's extra CA certificates (``ca_file``): checked when the config loads, so a
wrong path or a file that is no PEM stops start-up with the key named, not the first send; and
the one default TLS context the daemon's httpx clients share."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path


@functools.cache
def default_context() -> ssl.SSLContext:
    """The client TLS context of every httpx client the daemon makes (its shared client,
    python-telegram-bot's two), built as httpx builds its default: certifi's CA bundle, or
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set. A client left to build its own loads the
    bundle again: ~0.8 MiB of RSS each (bench/README, session 10). Contexts are made to be
    shared; each connection gets its own TLS state from it."""
    import httpx  # here: a config check needs no HTTP client

    return httpx.create_ssl_context()


def check_ca_file(path: Path | None, example: str = "/etc/ssl/private-ca.pem") -> Path | None:
    """For a pydantic field validator: ``path`` unchanged, or ValueError saying what to fix."""
    if path is None:
        return None
    if not path.is_absolute():
        raise ValueError(f"ca_file {str(path)!r} must be an absolute path, such as {example!r}")
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        raise ValueError(f"ca_file {str(path)!r} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"ca_file {str(path)!r} is not a readable PEM file of CA certificates ({exc})"
        ) from None
    return path
