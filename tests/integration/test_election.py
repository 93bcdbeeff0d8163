"""The two Kafka mechanisms a site's election rests on, against the real broker: the lease (one
holder at a time, kept by its holder when others join, passed on when it leaves) and the
transactional producer (a newer one fences the older, whose open transaction committed readers
never see)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from connector.config import KafkaSettings, load_settings
from connector.errors import ConfigError
from connector.kafka.lease import Lease
from connector.kafka.reader import TopicReader
from connector.kafka.topics import ensure_lease_topic, lease_topic
from connector.kafka.transactions import ProducerFenced, TransactionalProducer, TransactionFailed
from connector.records.messages import instance_of
from tests.support import wait_for
from tests.support.kafka import Writer, create_topic, end_offsets, publish


@pytest.fixture
def kafka(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> KafkaSettings:
    prefix = unique_name("election")
    return load_settings(
        flags={"kafka": {"bootstrap": kafka_bootstrap, "topic_prefix": prefix}}
    ).kafka


@pytest.fixture
def leases(kafka: KafkaSettings) -> Iterator[Callable[[str], Lease]]:
    """`leases(name)`: a contender for the lease of site `s`, closed after the test."""
    ensure_lease_topic(kafka, "s")
    topic = lease_topic(kafka.topic_prefix, "s")
    made: list[Lease] = []

    def make(name: str, timeout: float = 6.0) -> Lease:
        made.append(Lease(kafka, topic, topic, timeout, client_id=name))
        return made[-1]

    yield make
    for lease in made:
        lease.close()


def poll_all(leases: list[Lease]) -> list[bool]:
    return [lease.poll(0.05) for lease in leases]


def test_one_holder_kept_when_another_joins_and_passed_on_when_it_leaves(
    leases: Callable[[str], Lease],
) -> None:
    first = leases("first")
    wait_for(lambda: first.poll(0.1), timeout=60, what="the first contender to hold the lease")
    second = leases("second")
    # The second one joins (a rebalance), and the sticky assignment leaves the lease where it is.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert poll_all([first, second]) == [True, False]
    first.close()
    left = time.monotonic()
    wait_for(lambda: second.poll(0.1), timeout=15, what="the second to get the lease")
    print(f"\nlease passed on {time.monotonic() - left:.1f} s after the holder left")


def test_a_session_timeout_the_broker_refuses_names_the_setting(
    leases: Callable[..., Lease],
) -> None:
    lease = leases("impatient", timeout=1.0)
    with pytest.raises(ConfigError, match=r"site\.lease_timeout.*1 s"):
        wait_for(lambda: lease.poll(0.1), timeout=15, what="the broker's answer")


def test_a_newer_producer_fences_the_older_and_its_open_transaction_is_never_read(
    kafka: KafkaSettings,
) -> None:
    topic = f"{kafka.topic_prefix}.s"
    create_topic(kafka.bootstrap, topic, partitions=1)
    failures: list[TransactionFailed] = []
    reports: list[tuple[str, object]] = []

    def send(to: TransactionalProducer, key: str) -> None:
        to.produce(topic, key, b"v", lambda k, err, _p, _o: reports.append((k, err)))

    old = transactional(kafka, topic, "old", failures)
    send(old, "committed")
    old.flush()
    send(old, "open at the take-over")
    wait_for(
        lambda: (b"open at the take-over", "old") in read(kafka, topic, "read_uncommitted"),
        timeout=60,
        what="the open transaction's message in the log",
    )

    # init_transactions: the old one's transaction is aborted
    new = transactional(kafka, topic, "new", failures)
    send(new, "from the new one")
    new.flush()

    send(old, "after the take-over")
    with pytest.raises(ProducerFenced):
        old.flush()
    assert len(failures) == 1 and isinstance(failures[0], ProducerFenced)
    assert ("after the take-over", None) not in reports

    assert read(kafka, topic, "read_committed") == [
        (b"committed", "old"),
        (b"from the new one", "new"),
    ]


def test_a_producer_found_fenced_by_a_later_send_says_fenced_not_a_bare_fatal_error(
    kafka: KafkaSettings,
) -> None:
    # librdkafka learns of the fence in the background; a send after that fails with only
    # _FATAL, before poll() has served the cause. The failure must still say "fenced".
    topic = f"{kafka.topic_prefix}.s"
    create_topic(kafka.bootstrap, topic, partitions=1)
    failures: list[TransactionFailed] = []

    def send(to: TransactionalProducer) -> bool:
        to.produce(topic, "k", b"v", lambda _k, _err, _p, _o: None)
        return to.failure is not None

    old = transactional(kafka, topic, "old", failures)
    send(old)  # a transaction left open
    new = transactional(kafka, topic, "new", failures)
    new.flush()
    # No poll on the old one: each send only queues, until a send finds the producer unusable.
    wait_for(lambda: send(old), timeout=30, what="the old producer to fail", every=0.2)
    assert len(failures) == 1 and isinstance(failures[0], ProducerFenced), failures
    assert "fenced by a newer producer" in str(failures[0])


def transactional(
    kafka: KafkaSettings, topic: str, instance: str, failures: list[TransactionFailed]
) -> TransactionalProducer:
    """A producer on `topic` whose transactional id is the topic's name (so the next one fences
    it), naming `instance` in a header; its failure is appended to `failures`."""
    return TransactionalProducer(
        kafka, topic, {"cascade.instance": instance.encode()}, failures.append
    )


def read(kafka: KafkaSettings, topic: str, isolation: str) -> list[tuple[bytes | None, str | None]]:
    """(key, instance header) of every message of `topic`, read with `isolation`."""
    reader = TopicReader(kafka, topic, from_beginning=True, **{"isolation.level": isolation})
    try:
        return [(m.key(), instance_of(m)) for m in reader.messages(stop_at_end=True, timeout=30)]
    finally:
        reader.close()


def test_a_read_left_midway_goes_on_from_the_next_message(kafka: KafkaSettings) -> None:
    # What a standby does when it stops following to take over: no message lost or read twice.
    topic = f"{kafka.topic_prefix}.s"
    create_topic(kafka.bootstrap, topic, partitions=3)
    publish(kafka.bootstrap, topic, [], raw=[(f"k{i}".encode(), b"v") for i in range(3000)])
    reader = TopicReader(kafka, topic, from_beginning=True)
    try:
        seen = []
        first = reader.messages(stop_at_end=True, timeout=30)
        for msg in first:
            seen.append((msg.partition(), msg.offset()))
            if len(seen) == 1000:
                break
        first.close()
        seen += [(m.partition(), m.offset()) for m in reader.messages(stop_at_end=True, timeout=30)]
    finally:
        reader.close()
    assert len(seen) == len(set(seen)) == 3000


def test_reads_to_the_end_again_and_again_miss_nothing_of_a_live_topic(
    kafka: KafkaSettings,
) -> None:
    # A standby follows a topic its active writes to without pause: each read ends, the next
    # goes on, and together they see every message once.
    topic = f"{kafka.topic_prefix}.s"
    create_topic(kafka.bootstrap, topic, partitions=1)
    reader = TopicReader(kafka, topic, from_beginning=True)
    seen: list[int | None] = []
    try:
        with Writer(kafka.bootstrap, topic, b"k", b"v"):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                seen += [m.offset() for m in reader.messages(stop_at_end=True, timeout=30)]
        seen += [m.offset() for m in reader.messages(stop_at_end=True, timeout=30)]
    finally:
        reader.close()
    assert seen == list(range(len(seen))) and len(seen) == end_offsets(kafka.bootstrap, topic)[0]
