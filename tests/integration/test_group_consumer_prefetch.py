"""The group consumer's prefetch against the real broker: a quiet partition's record is not
queued behind a storming partition's backlog (issue 24). librdkafka keeps one queue for every
partition, served in the order fetched; what it prefetches of one partition is what another
partition's next record waits behind."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from connector.kafka.group_consumer import Consumer, Partition
from connector.kafka.producer import Producer
from connector.kafka.settings import KafkaSettings
from tests.support import wait_for
from tests.support.kafka import create_topic

BACKLOG = 20_000  #: records waiting in the storming partition
#: Records of the storming partition read before the quiet one, at most. librdkafka's defaults
#: as we had them (2,000 records a partition, 1 MB a partition per fetch) queued about 3,400 of
#: these 300-byte records ahead of it.
AHEAD_AT_MOST = 1_000


def test_a_quiet_partitions_record_is_not_queued_behind_a_storming_partitions_backlog(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    storm, quiet = unique_name("storm"), unique_name("quiet")
    for topic in (storm, quiet):
        create_topic(kafka_bootstrap, topic, partitions=1, compact=False)
    settings = KafkaSettings(bootstrap=kafka_bootstrap)
    # Batches of about 50 records, as a storming poller's are (some 1,200 records/s per site
    # over 3 partitions, 50 ms linger): a fetch returns whole batches, however large.
    producer = Producer(settings, None, **{"batch.size": 16_384})
    for n in range(BACKLOG):
        # Random bytes: compression must not fit the whole backlog in one small fetch.
        producer.produce(storm, f"k{n}", os.urandom(300), lambda *_report: None)
        if n % 1000 == 0:
            producer.poll(0)
    producer.flush(60)

    consumer = Consumer(settings, unique_name("group"))
    assigned: list[Partition] = []

    def on_assign(parts: list[Partition]) -> None:
        assigned.extend(parts)

    consumer.subscribe(
        f"^({re.escape(storm)}|{re.escape(quiet)})$",
        on_assign,
        lambda _parts: None,
        lambda _parts: None,
    )
    try:
        first: list[str] = []

        def a_storm_record_read() -> bool:
            first.extend(m.topic() or "" for m in consumer.consume(1, 0.2))
            return bool(first)

        # The storming partition's first fetch is in: whatever it prefetched is queued now.
        wait_for(a_storm_record_read, timeout=60, what="the first storm record")
        assert first == [storm] and len(assigned) == 2
        producer.produce(quiet, "quiet", b"change", lambda *_report: None)
        producer.flush(30)

        ahead = 0

        def the_quiet_record_read() -> bool:
            nonlocal ahead
            for msg in consumer.consume(100, 0.2):
                if msg.topic() == quiet:
                    return True
                ahead += 1
            return False

        wait_for(the_quiet_record_read, timeout=60, what="the quiet record")
        assert ahead <= AHEAD_AT_MOST, f"{ahead} storm records were read before the quiet one"
    finally:
        consumer.close()
