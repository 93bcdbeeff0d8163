"""cascade-connector: site status to the top layer of a cascading OpenStack, over Kafka."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cascade-connector")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
