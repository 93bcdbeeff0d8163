"""The retry delay of the site side: a poll that failed, a start-up step or a term Kafka failed."""

from __future__ import annotations

from connector.config import SiteSettings


def backoff_delay(settings: SiteSettings, failures: int, jitter: float) -> float:
    """Seconds to wait after `failures` consecutive failures: doubling from the initial delay up
    to the maximum, then jittered (`jitter` in [0, 1)) into its upper half so pollers spread."""
    ceiling = min(settings.backoff_max, settings.backoff_initial * 2 ** min(failures - 1, 30))
    return float(ceiling * (0.5 + 0.5 * jitter))
