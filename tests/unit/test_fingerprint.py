"""The content fingerprint: what the top layer shows, the same in every process."""

from __future__ import annotations

import os
import subprocess
import sys

from connector.records.fingerprint import DELETED, change_fingerprint, content_fingerprint
from connector.records.model import Deletion, DetailValue

DETAILS: dict[str, DetailValue] = {
    "vm_state": "active",
    "power_state": 1,
    "volumes": ["v1", "v2"],
    "task_state": None,
}
IN_ANOTHER_PROCESS = (
    "from connector.records.fingerprint import content_fingerprint\n"
    "print(content_fingerprint('ACTIVE', 'web', 'p', {'volumes': ['v1', 'v2'], 'power_state': 1,"
    " 'task_state': None, 'vm_state': 'active'}))"
)


def test_equal_in_another_process_with_another_hash_seed() -> None:
    """The publisher rebuilds its fingerprints from its topic after a restart."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", IN_ANOTHER_PROCESS], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == content_fingerprint("ACTIVE", "web", "p", DETAILS)


def test_the_values_and_their_types_count_not_the_order_of_the_details() -> None:
    base = content_fingerprint("ACTIVE", "web", "p", DETAILS)
    assert base == content_fingerprint("ACTIVE", "web", "p", dict(reversed(DETAILS.items())))
    variants = [
        content_fingerprint("ACTIVE", "web", "p", {**DETAILS, "power_state": value})
        for value in (1.0, True, "1", None, 2)
    ]
    variants += [
        content_fingerprint(status, name, project, DETAILS)
        for status, name, project in (("", "web", "p"), (None, "web", "p"), ("ACTIVE", None, "p"))
    ]
    variants.append(content_fingerprint("ACTIVE", "web", "p", {**DETAILS, "volumes": ["v2"]}))
    assert base not in variants and len(set(variants)) == len(variants)
    assert 0 <= base < 2**64


def test_a_deletion_has_one_fingerprint_no_content_has() -> None:
    assert change_fingerprint(Deletion("a", "server", "1", 3)) == DELETED
    assert change_fingerprint(Deletion("a", "volume", "2", None)) == DELETED
