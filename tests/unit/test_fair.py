"""Deficit round-robin over sites: a site with a few changes is served in full in the next call,
a storming site takes what is left, weights shift the shares, nobody starves."""

from __future__ import annotations

from connector.top.fair import FairShare


def test_a_quiet_site_is_served_in_full_next_to_a_storm() -> None:
    fair = FairShare()
    for _ in range(10):
        split = fair.split({"storm": 50_000, "quiet": 7}, room=100)
        assert split == {"storm": 93, "quiet": 7}


def test_the_room_is_split_evenly_between_storms_and_never_exceeded() -> None:
    fair = FairShare()
    served = {"a": 0, "b": 0, "c": 0}
    for _ in range(300):
        split = fair.split({"a": 10**6, "b": 10**6, "c": 10**6}, room=100)
        assert sum(split.values()) == 100
        for site, n in split.items():
            served[site] += n
    # Deficit round-robin is fair up to the credit one site may carry: one call's room.
    assert max(served.values()) - min(served.values()) <= 100


def test_weights_give_a_larger_share() -> None:
    fair = FairShare({"big": 3.0})
    served = {"big": 0, "small": 0}
    for _ in range(100):
        for site, n in fair.split({"big": 10**6, "small": 10**6}, room=40).items():
            served[site] += n
    assert served["big"] == 3 * served["small"]


def test_a_tiny_weight_is_still_served_and_unused_credit_is_not_saved() -> None:
    fair = FairShare({"tiny": 0.01})
    got = 0
    for _ in range(300):
        got += fair.split({"tiny": 10**6, "big": 10**6}, room=10).get("tiny", 0)
    assert 0 < got <= 2 * 300 * 10 * 0.01
    # An idle site keeps no credit: back with changes, it gets its share, not a saved burst.
    fair = FairShare()
    for _ in range(50):
        fair.split({"a": 10**6}, room=10)
    assert fair.split({"a": 10**6, "b": 10**6}, room=10) == {"a": 5, "b": 5}


def test_nothing_ready_or_no_room_gives_nothing() -> None:
    fair = FairShare()
    assert fair.split({}, room=10) == {}
    assert fair.split({"a": 0}, room=10) == {}
    assert fair.split({"a": 3}, room=0) == {}
    assert fair.split({"a": 3, "b": 2}, room=100) == {"a": 3, "b": 2}
