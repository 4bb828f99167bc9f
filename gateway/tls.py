"""PUBLIC: a channel's extra CA certificates (``ca_file``): checked when the config loads, so a
wrong path or a file that is no PEM stops start-up with the key named, not the first send."""

from __future__ import annotations

import ssl
from pathlib import Path


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
