"""The no-assignment watchdog: a group member holding no partition while partitions go unread.

A consumer was seen alive and polling for minutes after a broker restart, holding no partition
while the broker answered; librdkafka has had bugs of that kind (its issues 844, 3450, 4783),
and the product must not depend on their absence. Holding nothing is not wrong in itself: a
group with more members than partitions leaves some members idle. So once this member has held
nothing for `after` seconds, the watchdog asks (`unserved`) which partitions of the group's
topics no other member holds; when there are any, the member is stalled: the loop says so on
/readyz, counts it and rejoins the group with a new client, which gets `after` seconds of its
own. A Kafka that does not answer that question is an outage, not a stall: nothing is rebuilt.

Time and the question are injected, so the rules are tested without a broker or a real bug.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from connector.errors import KafkaError
from connector.kafka.group_consumer import Partition

log = logging.getLogger(__name__)


class AssignmentWatchdog:
    """Tells the loop when to rejoin: `check` once per turn, with whether it holds partitions."""

    def __init__(
        self,
        after: float,
        unserved: Callable[[], Sequence[Partition]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: seconds without a partition before the watchdog asks, and between two askings
        self.after = after
        self._unserved = unserved
        self._clock = clock
        self._since: float | None = None  #: when this member (or its new client) held nothing
        #: why this member is stalled, from the first rejoin until a partition comes
        self.stalled: str | None = None

    def check(self, holding: bool) -> bool:
        """True when the member should rejoin the group now (with a new client)."""
        now = self._clock()
        if holding:
            self._since = None
            self.stalled = None
            return False
        if self._since is None:
            self._since = now
        idle = now - self._since
        if idle < self.after:
            return False
        # Asked again only `after` seconds later, whatever the answer: an idle member of a
        # group with more members than partitions asks once a period, not once a turn.
        self._since = now
        try:
            unserved = self._unserved()
        except KafkaError as exc:
            log.warning("no partition for %.0f s, and Kafka cannot say why: %s", idle, exc)
            return False
        if not unserved:
            return False
        shown = ", ".join(f"{topic}[{partition}]" for topic, partition in unserved[:5])
        more = f" and {len(unserved) - 5} more" if len(unserved) > 5 else ""
        self.stalled = (
            f"no partition for {idle:.0f} s while Kafka answers and no other member of the "
            f"group reads {shown}{more}"
        )
        log.error("%s: rejoining the group with a new client", self.stalled)
        return True
