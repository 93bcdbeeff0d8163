"""The group consumer's commit has a deadline: a commit the coordinator never answers (as
librdkafka's synchronous commit was seen to wait for minutes) fails after the commit timeout
instead of holding the loop, the next one fails at once while it still waits (commits stay in
order), and committing works again once it has returned. A stop (`interrupt`) ends the wait at
once; closing while a commit waits (librdkafka's close waits for it) returns within the close
timeout, raising nothing; a rejoin's new client does not inherit the old one's unanswered
commit. The client is a real librdkafka consumer pointed at no broker, whose commit (and
close) is held on an event: no broker is needed to show what the wrapper does while the answer
does not come."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import confluent_kafka
import pytest

from connector.errors import KafkaError
from connector.kafka.group_consumer import Consumer
from connector.kafka.settings import KafkaSettings
from tests.support import wait_for

#: Seconds after which a test's held calls are answered anyway: a wrapper that waits for them
#: fails its test's time bound instead of hanging the run.
RELEASE_AFTER = 10.0


class UnansweredCommits(confluent_kafka.Consumer):
    """A librdkafka consumer whose commits wait until `answer` is set, then succeed; its close
    waits for that too, as librdkafka's waits for a commit still in flight."""

    answer: ClassVar[threading.Event] = threading.Event()
    answered: ClassVar[list[list[confluent_kafka.TopicPartition]]] = []

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.answer.wait()
        offsets: list[confluent_kafka.TopicPartition] = kwargs["offsets"]
        self.answered.append(offsets)
        return offsets

    def close(self) -> None:
        self.answer.wait()
        super().close()


class AnsweredCommits(confluent_kafka.Consumer):
    """A librdkafka consumer whose commits succeed at once."""

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        offsets: list[confluent_kafka.TopicPartition] = kwargs["offsets"]
        return offsets


@pytest.fixture
def held() -> Iterator[None]:
    """UnansweredCommits' calls held from now, answered at the end (or after RELEASE_AFTER)."""
    UnansweredCommits.answer.clear()
    UnansweredCommits.answered.clear()
    release = threading.Timer(RELEASE_AFTER, UnansweredCommits.answer.set)
    release.start()
    yield
    UnansweredCommits.answer.set()
    release.cancel()


@pytest.fixture
def consumer(held: None) -> Consumer:
    return Consumer(
        KafkaSettings(bootstrap="127.0.0.1:9"),
        "g",
        make_client=UnansweredCommits,
        commit_timeout=0.5,
        close_timeout=0.5,
    )


def test_a_commit_with_no_answer_fails_after_its_deadline_and_holds_later_ones(
    consumer: Consumer,
) -> None:
    started = time.monotonic()
    with pytest.raises(KafkaError, match=r"no answer within 0\.5 s"):
        consumer.commit({("t", 0): 5})
    assert time.monotonic() - started < 5.0

    started = time.monotonic()
    with pytest.raises(KafkaError, match="an earlier commit still has no answer"):
        consumer.commit({("t", 0): 7})
    assert time.monotonic() - started < 0.4  # refused at once, not waited for

    UnansweredCommits.answer.set()
    wait_for(lambda: len(UnansweredCommits.answered) == 1, 5.0, "the first commit's answer")
    consumer.commit({("t", 0): 7})
    assert [
        [(tp.topic, tp.partition, tp.offset) for tp in c] for c in UnansweredCommits.answered
    ] == [
        [("t", 0, 5)],
        [("t", 0, 7)],
    ]


def test_a_stop_ends_the_wait_for_a_commit_answer_at_once(held: None) -> None:
    slow = Consumer(
        KafkaSettings(bootstrap="127.0.0.1:9"),
        "g",
        make_client=UnansweredCommits,
        commit_timeout=30.0,
        close_timeout=0.5,
    )
    threading.Timer(0.2, slow.interrupt).start()
    started = time.monotonic()
    with pytest.raises(KafkaError, match="no answer within a stop"):
        slow.commit({("t", 0): 5})
    assert time.monotonic() - started < 2.0
    slow.close()


def test_closing_while_a_commit_waits_returns_within_the_close_timeout(
    consumer: Consumer,
) -> None:
    with pytest.raises(KafkaError, match="no answer"):
        consumer.commit({("t", 0): 5})
    started = time.monotonic()
    consumer.close()  # raises nothing, though its close is still waiting
    assert time.monotonic() - started < 2.0


def test_a_rejoin_leaves_the_old_clients_unanswered_commit_behind(held: None) -> None:
    clients = iter([UnansweredCommits, AnsweredCommits])
    member = Consumer(
        KafkaSettings(bootstrap="127.0.0.1:9"),
        "g",
        make_client=lambda config: next(clients)(config),
        commit_timeout=0.5,
        close_timeout=0.5,
    )
    try:
        member.subscribe("^t$", lambda _parts: None, lambda _parts: None, lambda _parts: None)
        with pytest.raises(KafkaError, match="no answer"):
            member.commit({("t", 0): 5})
        started = time.monotonic()
        member.rejoin()
        assert time.monotonic() - started < 2.0, "the old client's close held the rejoin"
        member.commit({("t", 0): 7})  # the new client's: not refused for the old one's
        assert member.paused == frozenset()
    finally:
        UnansweredCommits.answer.set()
        member.close()
