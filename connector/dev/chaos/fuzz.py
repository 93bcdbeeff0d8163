"""Chaos: fuzzed input. Record values on a site topic, and settings files and environment values.

- `fuzz_records`: `count` mangled messages (random bytes, truncated or bit-flipped encodings, a
  valid header over garbage, a value disagreeing with its key, bad keys, bad sequence headers) on
  a site topic, then `consume --until-idle`. Must hold: the consumer exits 0, and every message
  the codec cannot read is on the dead-letter topic with a reason; the few that mangling left
  readable are applied (or dead-lettered as rejected), never lost.
- `hostile_records`: the same, `hostile` (more ways: another site's records, tombstones and
  heartbeats in this site's topic, keys of 100 kB, values near Kafka's 1 MB, many large
  headers), with a good record after every few hostile ones, and that other site's own topic
  holding the good records the hostile ones try to overwrite. Must hold as well: every good
  record is applied, and the other site's rows are exactly what its own topic said.
- `fuzz_settings`: hypothesis draws settings files (valid TOML of wrong shapes and values, and
  broken bytes) and `CASCADE_*` values; `cascade-connector config` must exit 0 or 2, an exit 2
  naming the setting (or the file), never a traceback, and never echo a password. Needs the dev
  extra (hypothesis).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connector.config import ENV_PREFIX, Settings
from connector.dev.chaos import Outcome
from connector.dev.chaos.harness import ChaosRun, Children, SinkRows
from connector.kafka.producer import Producer
from connector.kafka.reader import TopicReader
from connector.kafka.topics import ensure_site_topic
from connector.records.codec import Codec
from connector.records.errors import DecodeError
from connector.records.messages import change_from_message, sequence_header, to_message
from connector.records.model import HEARTBEAT_KIND, SEQUENCE_HEADER, StatusRecord

SITE = "fuzz"
#: The site whose rows hostile records in SITE's topic try to change.
OTHER = "fuzz-other"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: Ways of `mangled`: the first are fuzzing, the rest (with `hostile`) an attack.
_FUZZ_WAYS, _HOSTILE_WAYS = 9, 15


@dataclass(frozen=True)
class _Message:
    """Just enough of a Kafka message for `change_from_message` (to tell readable from not)."""

    raw_key: bytes | None
    raw_value: bytes | None
    raw_headers: list[tuple[str, bytes]]

    def key(self) -> bytes | None:
        return self.raw_key

    def value(self) -> bytes | None:
        return self.raw_value

    def headers(self) -> list[tuple[str, bytes]]:
        return self.raw_headers


def good(site: str, i: int, status: str = "ACTIVE", sequence: int | None = None) -> StatusRecord:
    """The good record `i` of `site` (sequence i + 1 unless given)."""
    at = T0 + timedelta(seconds=i)
    return StatusRecord(site, "server", f"good-{i}", status, sequence or i + 1, at)


def message_of(record: StatusRecord, codec: Codec) -> _Message:
    message = to_message(record, codec)
    return _Message(record.key.encode(), message.value, [])


def mangled(rng: random.Random, codec: Codec, i: int, hostile: bool = False) -> _Message:
    """One fuzzed message: a valid record of object `i`, mangled one of several ways (more with
    `hostile`: see `_hostile`)."""
    record = StatusRecord(
        SITE,
        rng.choice(["server", "volume", "port"]),
        f"obj-{i}",
        rng.choice(["ACTIVE", "ERROR", "in-use", None]),
        i + 1,
        T0 + timedelta(seconds=i),
        name=f"n{i}",
        details={"x": i},
    )
    key = record.key.encode()
    value = to_message(record, codec).value or b""
    how = rng.randrange(_HOSTILE_WAYS if hostile else _FUZZ_WAYS)
    if how >= _FUZZ_WAYS:
        return _hostile(rng, codec, i, how - _FUZZ_WAYS, key, value)
    if how == 0:  # random bytes
        return _Message(key, rng.randbytes(rng.randrange(0, 200)), [])
    if how == 1:  # truncated
        return _Message(key, value[: rng.randrange(0, len(value))], [])
    if how == 2:  # bytes flipped anywhere
        mangled_value = bytearray(value)
        for _ in range(rng.randrange(1, 4)):
            mangled_value[rng.randrange(len(mangled_value))] ^= 1 << rng.randrange(8)
        return _Message(key, bytes(mangled_value), [])
    if how == 3:  # the encoding's header over garbage
        return _Message(key, value[:10] + rng.randbytes(rng.randrange(0, 100)), [])
    if how == 4:  # a valid value under another object's key
        return _Message(f"{SITE}/server/other-{i}".encode(), value, [])
    if how == 5:  # a key that is not site/kind/id (unique: see `fuzz_records` on compaction)
        bad_key = rng.choice([b"no-slashes-%d", b"a//b%d", b"%d/x", b"\x00%d"]) % i
        return _Message(bad_key, value, [])
    if how == 6:  # a key that is not UTF-8 (a keyless record cannot exist: the topic is compacted)
        return _Message(b"\xff" + key, value, [])
    if how == 7:  # a tombstone with a bad sequence header
        bad = rng.choice([b"abc", b"-1", b"1e3", b"\xff\xfe", b""])
        return _Message(key, None, [(SEQUENCE_HEADER, bad)])
    return _Message(key, value + rng.randbytes(rng.randrange(1, 20)), [])  # trailing bytes


def _hostile(
    rng: random.Random, codec: Codec, i: int, how: int, key: bytes, value: bytes
) -> _Message:
    """An attack on the top layer through SITE's topic. The other site's keys are the ones its
    own topic holds good records for (`hostile_records`), with a higher sequence."""
    if how == 0:  # another site's record
        return message_of(good(OTHER, i, "HIJACKED", sequence=i + 2), codec)
    if how == 1:  # another site's tombstone
        return _Message(f"{OTHER}/server/good-{i}".encode(), None, [sequence_header(2**62)])
    if how == 2:  # a heartbeat for another site, under this site's key or the other's
        beat = StatusRecord(OTHER, HEARTBEAT_KIND, OTHER, "ok", 2**62, T0)
        under = rng.choice([f"{SITE}/{HEARTBEAT_KIND}/{OTHER}", beat.key]).encode()
        return _Message(under, to_message(beat, codec).value, [])
    if how == 3:  # a key of up to 100 kB
        return _Message(key + b"x" * rng.randrange(1_000, 100_000), value, [])
    if how == 4:  # many large headers, some named as ours, over a valid value (readable)
        names = [SEQUENCE_HEADER, "reason", "original.offset", "x" * 200, ""]
        headers = [
            (rng.choice(names) + str(n), rng.randbytes(rng.randrange(0, 2_000))) for n in range(30)
        ]
        return _Message(key, value, headers)
    # a value near Kafka's limit (1 MB a message) now and then: each costs a megabyte
    size = 990_000 if rng.random() < 0.002 else rng.randrange(10_000, 100_000)
    return _Message(key, value[:10] + rng.randbytes(size), [])


def readable(message: _Message, codec: Codec, site: str | None = None) -> bool:
    try:
        change_from_message(message, codec, site)
    except DecodeError:
        return False
    return True


def fuzz_records(
    bootstrap: str,
    sink_url: str,
    workdir: Path,
    *,
    count: int = 100_000,
    seed: int = 7,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Run the scenario; see the module docstring."""
    return _records(bootstrap, sink_url, workdir, count, seed, echo, hostile=False)


def hostile_records(
    bootstrap: str,
    sink_url: str,
    workdir: Path,
    *,
    count: int = 100_000,
    good_every: int = 10,
    seed: int = 11,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Run the scenario; see the module docstring. `count` hostile messages, a good record
    after every `good_every` of them."""
    return _records(bootstrap, sink_url, workdir, count, seed, echo, True, good_every)


def _records(
    bootstrap: str,
    sink_url: str,
    workdir: Path,
    count: int,
    seed: int,
    echo: Callable[[str], None],
    hostile: bool,
    good_every: int = 0,
) -> Outcome:
    """`count` mangled messages (and good ones) on SITE's topic, then `consume --until-idle`.
    Every fuzzed record has a key of its own: the site topic is compacted, and records sharing
    a key may be compacted away before they are read, as they should be."""
    outcome = Outcome("hostile records" if hostile else "fuzzed record values")
    rng, codec = random.Random(seed), Codec()
    names = ChaosRun()
    kafka, dlq = names.kafka(bootstrap), names.dead_letters
    topic, other_topic = f"{names.prefix}.{SITE}", f"{names.prefix}.{OTHER}"
    for site in (SITE, OTHER) if hostile else (SITE,):
        ensure_site_topic(kafka, site)

    producer = Producer(kafka)
    where: dict[int, tuple[int, int]] = {}
    failures: list[str] = []
    unreadable: set[int] = set()
    #: key -> index of the readable fuzzed values: applied, unless dead-lettered as rejected
    readable_values: dict[tuple[str, str, str], int] = {}
    goods: list[StatusRecord] = []
    others: list[StatusRecord] = []

    def send(to: str, message: _Message, i: int | None = None) -> None:
        def on_delivery(key: str, err: object, partition: int, offset: int) -> None:
            if err is not None:
                failures.append(f"{key[:100]}: {err}")
            if i is not None:
                where[i] = (partition, offset)

        producer.produce(
            to, message.raw_key, message.raw_value, on_delivery, dict(message.raw_headers)
        )

    other_keys = f"{OTHER}/server/".encode()
    for i in range(count):
        message = mangled(rng, codec, i, hostile)
        if not readable(message, codec, SITE):
            unreadable.add(i)
        elif message.raw_value is not None:
            change = change_from_message(message, codec, SITE)
            readable_values[(change.site, change.kind, change.id)] = i
        if hostile and (message.raw_key or b"").startswith(other_keys):
            others.append(good(OTHER, i))  # what the other site's own topic says of that key
            send(other_topic, message_of(others[-1], codec))
        send(topic, message, i)
        if good_every and i % good_every == 0:
            goods.append(good(SITE, i))
            send(topic, message_of(goods[-1], codec))
    producer.flush(300)
    producer.close()
    echo(
        f"  published {count:,} {'hostile' if hostile else 'fuzzed'} records "
        f"({len(unreadable):,} unreadable), {len(goods):,} good ones among them"
        + (f", {len(others):,} good ones in the other site's topic" if hostile else "")
    )

    children = names.children(workdir, bootstrap, sink_url)
    started = time.monotonic()
    try:
        children.start("consumer", "consume", "--until-idle")
        code = children.wait("consumer", 1800)
        if code != 0:
            outcome.problems.append(f"consumer ended with {code}: {children.log_tail('consumer')}")
    finally:
        children.stop_all()
    seconds = time.monotonic() - started

    reasons: Counter[str] = Counter()
    dead: set[tuple[int, int]] = set()
    reader = TopicReader(kafka, dlq, from_beginning=True)
    try:
        for msg in reader.messages(stop_at_end=True, timeout=120):
            found = msg.headers() or []
            pairs = found.items() if isinstance(found, dict) else found
            headers = {name: _text(value) for name, value in pairs}
            reason = headers.get("reason", "")
            if not reason or not headers.get("error"):
                outcome.problems.append(f"dead letter without a reason: {headers}")
            if headers.get("original.topic") != topic:
                outcome.problems.append(f"a dead letter from {headers.get('original.topic')}")
            reasons[reason] += 1
            dead.add((int(headers["original.partition"]), int(headers["original.offset"])))
    finally:
        reader.close()
    missing = [i for i in unreadable if where.get(i) not in dead]
    if failures:
        outcome.problems.append(f"{len(failures)} records not published: {failures[:3]}")
    if missing:
        outcome.problems.append(
            f"{len(missing)} unreadable records are not in the dead-letter topic, e.g. "
            f"{[where.get(i) for i in missing[:3]]}"
        )
    rows = SinkRows(sink_url)
    try:
        statuses = rows.statuses()
        other_beat = rows.heartbeat(OTHER)
    finally:
        rows.close()
    lost = [r.key for r in goods if statuses.get((r.site, r.kind, r.id)) != r.status]
    if lost:
        outcome.problems.append(f"{len(lost)} good records not applied, e.g. {lost[:3]}")
    unaccounted = [
        key
        for key, i in readable_values.items()
        if key not in statuses and where.get(i) not in dead
    ]
    if unaccounted:
        outcome.problems.append(
            f"{len(unaccounted)} readable records neither applied nor dead-lettered, e.g. "
            f"{unaccounted[:3]}"
        )
    other_rows = {key: status for key, status in statuses.items() if key[0] == OTHER}
    other_truth = {(r.site, r.kind, r.id): r.status for r in others}
    if other_rows != other_truth or other_beat is not None:
        changed = sum(other_rows.get(key) != status for key, status in other_truth.items())
        outcome.problems.append(
            f"the other site's rows are not what its own topic says: {changed} of "
            f"{len(other_truth)} differ, {len(other_rows.keys() - other_truth.keys())} extra, "
            f"its heartbeat {other_beat!r} (none was sent)"
        )
    outcome.figures.update(
        {
            "records": count,
            "unreadable": len(unreadable),
            "readable after mangling": count - len(unreadable),
            **(
                {"good records among them": len(goods), "good records lost": len(lost)}
                if hostile
                else {}
            ),
            **({"good records in the other site's topic": len(others)} if hostile else {}),
            "dead letters": len(dead),
            **{f"dead letters ({reason})": n for reason, n in sorted(reasons.items())},
            "unreadable and not dead-lettered": len(missing),
            "consumer exit code": -1 if code is None else code,
            "seconds to consume": seconds,
            "records/s": count / seconds if seconds else 0.0,
        }
    )
    return outcome


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def fuzz_settings(
    examples: int = 2000, processes: int = 10, seed: int = 3, echo: Callable[[str], None] = print
) -> Outcome:
    """Run the scenario; see the module docstring. `processes` of the examples also run as a
    real `cascade-connector config` process."""
    # Imported here: hypothesis is in the dev extra, and only this scenario needs it.
    from click.testing import CliRunner
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed
    from hypothesis import strategies as st

    from connector.cli import cli

    outcome = Outcome("fuzzed settings")
    fields = {
        section: list(info.annotation.model_fields)  # type: ignore[union-attr]
        for section, info in Settings.model_fields.items()
    }
    env_names = [f"{ENV_PREFIX}{s}_{f}".upper() for s, names in fields.items() for f in names]
    secret = "s3cr3t-fuzz"
    scalar = st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=40),
        st.sampled_from(
            [
                "",
                "-1",
                "0",
                "nan",
                "inf",
                "1e400",
                "host",
                "a:b",
                f"postgresql://u:{secret}@h/db",
                f"http://u:{secret}@h",
                "server,nope",
                "\x00",
            ]
        ),
    )
    value = st.one_of(
        scalar,
        st.lists(scalar, max_size=3),
        st.dictionaries(st.text(max_size=8), scalar, max_size=3),
    )
    section_names = st.one_of(st.sampled_from(sorted(fields)), st.text(min_size=1, max_size=8))
    toml_doc = st.dictionaries(
        section_names,
        st.one_of(
            st.dictionaries(
                st.one_of(
                    st.sampled_from(sorted({f for fs in fields.values() for f in fs})),
                    st.text(min_size=1, max_size=10),
                ),
                value,
                max_size=4,
            ),
            scalar,
        ),
        max_size=3,
    )
    file_body = st.one_of(toml_doc.map(to_toml), st.binary(max_size=200).map(bytes))
    env = st.dictionaries(
        st.sampled_from(env_names), st.one_of(scalar.map(str), st.text(max_size=30)), max_size=4
    )

    runner = CliRunner()
    tally: Counter[str] = Counter()
    problems: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="cascade-fuzz-"))
    subprocess_budget = [processes]

    def check(body: bytes, variables: dict[str, str]) -> None:
        path = workdir / "settings.toml"
        path.write_bytes(body)
        clean = {k: v.replace("\x00", "") for k, v in variables.items()}
        result = runner.invoke(cli, ["--config", str(path), "config"], env=clean)
        tally[f"exit {result.exit_code}"] += 1
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(
                f"traceback ({type(result.exception).__name__}: {result.exception}) "
                f"for file {body[:80]!r}, env {clean}"
            )
        elif result.exit_code not in (0, 2):
            problems.append(f"exit {result.exit_code} for file {body[:80]!r}, env {clean}")
        elif result.exit_code == 2 and not _names_a_setting(output, fields):
            problems.append(f"exit 2 naming no setting: {output.strip()[:200]}")
        if secret in output:
            problems.append(f"the password was printed: {output.strip()[:200]}")
        if subprocess_budget[0] > 0 and result.exit_code != 0:
            subprocess_budget[0] -= 1
            _check_process(path, clean, problems, tally)

    run = given(file_body, env)(lambda body, variables: check(body, variables))
    run = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(run)
    started = time.monotonic()
    with_seed(seed)(run)()
    seconds = time.monotonic() - started
    outcome.problems += problems[:20]
    outcome.figures.update(
        {
            "examples": sum(tally.values()) - tally["process"],
            **{name: n for name, n in sorted(tally.items())},
            "seconds": seconds,
        }
    )
    echo(f"  {examples:,} settings examples in {seconds:.1f} s")
    return outcome


def _check_process(
    path: Path, env: dict[str, str], problems: list[str], tally: Counter[str]
) -> None:
    """The same example as a real process: exit 2, no traceback on stderr."""
    children = Children(path.parent, env)
    children.start("config", "--config", str(path), "config")
    code = children.wait("config", 60)
    log = children.log_tail("config", 50)
    children.stop_all()
    tally["process"] += 1
    if code != 2 or "Traceback" in log:
        problems.append(f"process exit {code}: {log[-300:]}")


def _names_a_setting(output: str, fields: dict[str, list[str]]) -> bool:
    """True when the error names a setting (`section.field`, an unknown section or key) or the
    settings file (unreadable, not TOML, a section that is not a table)."""
    if "config file" in output or "must be a table" in output:
        return True
    known = [f"{section}." for section in fields] + ["invalid settings:"]
    return any(mark in output for mark in known)


def to_toml(doc: dict[str, Any]) -> bytes:
    """A small TOML writer for the fuzzed documents: tables of scalars, lists and inline tables."""
    lines: list[str] = []
    for name, body in doc.items():
        if isinstance(body, dict):
            lines.append(f"[{_toml_key(name)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{_toml_key(name)} = {_toml_value(body)}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _toml_key(key: str) -> str:
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = "".join(
            c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
            for c in value
            if ord(c) < 0x10000 and not 0xD800 <= ord(c) < 0xE000
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))
