"""Sovereign Gateway: a self-hosted AI messaging gateway.

The public API for plugin authors lives in :mod:`gateway.plugin`, :mod:`gateway.messages`,
:mod:`gateway.errors` and :mod:`gateway.testing`; everything else is internal.
"""

import sys as _sys

__version__ = "0.1.0"

# httpx's __init__ imports its command-line client (httpx._main) whenever click, rich and pygments
# are installed, as they are here: ~4 MiB in every gateway process, the daemon's included, for
# httpx.main(), which only the `httpx` console script calls, in a process of its own. Marked
# absent before httpx is first imported, the module is skipped and httpx defines a stub main().
if "httpx" not in _sys.modules:
    _sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
