"""Sovereign Gateway: a self-hosted AI messaging gateway.

The public API for plugin authors lives in :mod:`gateway.plugin`, :mod:`gateway.messages`,
:mod:`gateway.errors` and :mod:`gateway.testing`; everything else is internal.
"""

__version__ = "0.1.0"
