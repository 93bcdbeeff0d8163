"""Keeping secrets out of every output: passwords in URLs, and secret-bearing settings.

One helper for every place that prints, logs or raises: `redact_url` for one URL, `redact_text`
for free text (an error message, a log line), `redact` for nested settings (the `config` dump,
librdkafka dictionaries). Log formatters pass every line through `redact_text`, so a message that
quotes a URL with a password never reaches the log as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: What a secret is replaced with.
MASK = "***"

#: `scheme://user:password@` in a URL (the user is kept: it helps to tell which login failed).
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):(?P<secret>[^\s@'\"]*)@"
)

#: Setting names that hold a secret: librdkafka's `sasl.password`, `ssl.key.password`,
#: `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`,
#: `sasl.oauthbearer.config` (may carry a client secret), and libpq's `password`.
_SECRET_NAME = r"[\w.-]*(?:password|passwd|secret|key\.pem|oauthbearer\.config)[\w.-]*"
SECRET_KEY = re.compile(rf"^{_SECRET_NAME}$", re.IGNORECASE)

#: `name=value`, `name: value`, `'name': 'value'` for a secret-bearing name, in free text.
_SECRET_ASSIGNMENT = re.compile(
    rf"(?P<head>\b{_SECRET_NAME}['\"]?\s*[=:]\s*['\"]?)(?P<secret>[^\s'\",}}&]+)", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """`url` with the password (if any) replaced by MASK."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """`text` with every URL password and every `secret-name=value` value replaced by MASK."""
    text = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
    return _SECRET_ASSIGNMENT.sub(rf"\g<head>{MASK}", text)


def redact(value: Any) -> Any:
    """A copy of `value` (nested dicts, lists, strings) safe to print: values of secret-named
    keys become MASK, and every string is passed through `redact_text`."""
    if isinstance(value, Mapping):
        return {
            key: MASK if isinstance(key, str) and SECRET_KEY.match(key) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
