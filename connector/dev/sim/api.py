"""What the service modules share: the request and response types, errors in each service's own
body style, and the parsing of microversions, limits and markers.

A service handler takes a `Request` and returns a `Response`, or raises `ApiError`, which the
HTTP layer turns into a response; `ApiError` never leaves the sim package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

#: Nova's and Cinder's fault names by status (their fault wrappers share this table).
_FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    503: "serviceUnavailable",
}

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request; header names are lower case."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes = b""
    #: Scheme, host and port the client used, for links in responses.
    base_url: str = ""

    def arg(self, name: str) -> str | None:
        """The last value of a query parameter, as the services read single values."""
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as exc:
            raise ApiError(400, compute_fault(400, f"Malformed request body: {exc}")) from exc


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


#: A string `json_response` writes as an integer of more digits than Python converts (4,300),
#: which `json.dumps` cannot write: `huge_integer(object_id)` puts one in a document.
_HUGE = "\x00sim-huge-integer:"
_HUGE_JSON = re.compile(r'"\\u0000sim-huge-integer:(\d+)"')


def huge_integer(seed: int) -> str:
    """What `json_response` writes as an integer of about 5,000 digits, starting with `seed`."""
    return f"{_HUGE}{seed}"


def json_response(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Response:
    text = json.dumps(doc)
    if "sim-huge-integer:" in text:
        text = _HUGE_JSON.sub(lambda m: m[1] + "7" * 5000, text)
    return Response(status, text.encode(), {"Content-Type": "application/json", **(headers or {})})


class ApiError(Exception):
    """An error answer: status, the service's error document, extra headers."""

    def __init__(self, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, doc)
        self.status = status
        self.doc = doc
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return json_response(self.status, self.doc, self.headers)


def compute_fault(status: int, message: str) -> dict[str, Any]:
    """Nova's and Cinder's error body: `{"badRequest": {"code": 400, "message": ...}}`."""
    return {_FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}


def neutron_fault(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    """Neutron's error body: `{"NeutronError": {"type": "HTTPBadRequest", ...}}` (`kind`, when
    given, is the type: `PortNotFound` for an unknown marker)."""
    kind = kind or "HTTP" + _REASONS.get(status, "Error").replace(" ", "")
    return {"NeutronError": {"type": kind, "message": message, "detail": ""}}


def identity_fault(status: int, message: str) -> dict[str, Any]:
    """Keystone's (and keystonemiddleware's) error body: `{"error": {"code", "title", ...}}`."""
    return {"error": {"code": status, "title": _REASONS.get(status, "Error"), "message": message}}


def reason(status: int) -> str:
    return _REASONS.get(status, "OK" if status < 300 else "Error")


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor)


def microversion(
    request: Request,
    service: str,
    legacy_header: str | None,
    minimum: str,
    maximum: str,
    fault: Any,
) -> tuple[int, int]:
    """The microversion a request asks for (`OpenStack-API-Version: <service> X.Y`, or the
    legacy header), the minimum when none; 400 if unreadable, 406 if out of range."""
    asked = None
    header = request.headers.get("openstack-api-version")
    if header:
        for part in header.split(","):
            name, _, value = part.strip().partition(" ")
            if name.lower() == service:
                asked = value.strip()
    if asked is None and legacy_header:
        asked = request.headers.get(legacy_header)
    if not asked:
        return parse_version(minimum)
    if asked.lower() == "latest":
        return parse_version(maximum)
    try:
        version = parse_version(asked)
    except ValueError as exc:
        raise ApiError(400, fault(400, f"Invalid API version request string {asked}")) from exc
    if not parse_version(minimum) <= version <= parse_version(maximum):
        raise ApiError(
            406,
            fault(
                406,
                f"Version {asked} is not supported by the API. "
                f"Minimum is {minimum} and maximum is {maximum}.",
            ),
        )
    return version


def parse_limit(request: Request, fault: Any, max_limit: int | None) -> int | None:
    """`limit` as a positive int, capped at the service's max_limit; 400 when malformed."""
    raw = request.arg("limit")
    if raw is None:
        return max_limit
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ApiError(400, fault(400, f"limit param must be an integer, got {raw!r}"))
    if max_limit is not None:
        limit = min(limit, max_limit)
    return limit


def next_link(request: Request, endpoint_path: str, limit: int, marker: str) -> str:
    """The request's URL with limit and marker for the next page; other filters kept."""
    params = [
        (name, value)
        for name, values in request.query.items()
        if name not in ("limit", "marker")
        for value in values
    ]
    params += [("limit", str(limit)), ("marker", marker)]
    return f"{request.base_url}{endpoint_path}?{urlencode(params)}"
