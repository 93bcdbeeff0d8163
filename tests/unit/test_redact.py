"""One redaction helper: passwords in URLs and secret-named settings never reach an output."""

from __future__ import annotations

import io
import logging

import pytest

from connector.ops.logging import setup_logging
from connector.redact import MASK, redact, redact_text

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"postgresql://u:{SECRET}@127.0.0.1/db", "postgresql://u:***@127.0.0.1/db"),
        (f"error at https://reg:{SECRET}@r.example:8081/x", "https://reg:***@r.example:8081/x"),
        (f"{{'sasl.password': '{SECRET}'}}", "'sasl.password': '***'"),
        (f'"ssl.key.password": "{SECRET}"', '"ssl.key.password": "***"'),
        (f"-X sasl.oauthbearer.client.secret={SECRET}", "client.secret=***"),
        (f"host=db password={SECRET} user=u", "password=*** user=u"),
    ],
)
def test_secrets_in_text_are_masked(text: str, shown: str) -> None:
    out = redact_text(text)
    assert SECRET not in out
    assert shown in out


@pytest.mark.parametrize(
    "text",
    [
        "http://host:8080/path",
        'password authentication failed for user "u"',
        "sasl.username=cascade",
        "sqlite:///var/lib/top.sqlite",
    ],
)
def test_text_without_secrets_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_nested_settings_are_masked_by_key_and_by_url() -> None:
    doc = {
        "kafka": {
            "librdkafka": {"sasl.password": SECRET, "sasl.username": "u", "ssl.key.pem": SECRET},
            "schema_registry_url": f"http://r:{SECRET}@h",
        },
        "sink": {"url": f"postgresql://u:{SECRET}@h/db", "retries": 3},
        "list": [f"http://a:{SECRET}@h"],
    }
    out = redact(doc)
    assert SECRET not in repr(out)
    assert out["kafka"]["librdkafka"] == {
        "sasl.password": MASK,
        "sasl.username": "u",
        "ssl.key.pem": MASK,
    }
    assert out["sink"]["retries"] == 3


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_are_redacted(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("INFO", "json" if fmt == "json" else "text")
    try:
        logging.getLogger("test").error("cannot reach %s", f"postgresql://u:{SECRET}@h/db")
        try:
            raise ValueError(f"sasl.password={SECRET}")
        except ValueError:
            logging.getLogger("test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    out = stream.getvalue()
    assert "cannot reach postgresql://u:***@h/db" in out
    assert SECRET not in out
