"""The group consumer's commit has a deadline: a commit the coordinator never answers (as
librdkafka's synchronous commit was seen to wait for minutes) fails after the commit timeout
instead of holding the loop, the next one fails at once while it still waits (commits stay in
order), and committing works again once it has returned. The client is a real librdkafka
consumer pointed at no broker, whose commit is held on an event: no broker is needed to show
what the wrapper does while the answer does not come."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import confluent_kafka
import pytest

from connector.errors import KafkaError
from connector.kafka.group_consumer import Consumer
from connector.kafka.settings import KafkaSettings
from tests.support import wait_for


class UnansweredCommits(confluent_kafka.Consumer):
    """A librdkafka consumer whose commits wait until `answer` is set, then succeed."""

    answer: ClassVar[threading.Event] = threading.Event()
    answered: ClassVar[list[list[confluent_kafka.TopicPartition]]] = []

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.answer.wait()
        offsets: list[confluent_kafka.TopicPartition] = kwargs["offsets"]
        self.answered.append(offsets)
        return offsets


@pytest.fixture
def consumer() -> Any:
    UnansweredCommits.answer.clear()
    UnansweredCommits.answered.clear()
    member = Consumer(
        KafkaSettings(bootstrap="127.0.0.1:9"),
        "g",
        make_client=UnansweredCommits,
        commit_timeout=0.5,
    )
    yield member
    UnansweredCommits.answer.set()


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
