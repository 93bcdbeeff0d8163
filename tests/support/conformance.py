"""What the conformance tests (the sim against a real Cinder or Neutron) share: answers made
comparable (times replaced by their format, links split into path and query) and the
differences between two of them."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")


def masked_times(text: str) -> str:
    """Times replaced by their format: `<time dddd-dd-ddTdd:dd:dd.dddddd>`."""
    return TIME.sub(lambda m: "<time " + re.sub(r"\d", "d", m.group()) + ">", text)


def links_parsed(doc: Any) -> Any:
    """`href`s split into path and sorted query pairs (their order has no meaning)."""
    if isinstance(doc, list):
        return [links_parsed(item) for item in doc]
    if not isinstance(doc, dict):
        return doc
    out = {key: links_parsed(value) for key, value in doc.items()}
    if isinstance(out.get("href"), str) and "?" in out["href"]:
        parts = urlsplit(out["href"])
        query = [(key, masked_times(value)) for key, value in parse_qsl(parts.query)]
        out["href"] = {"path": parts.path, "query": sorted(query)}
    return out


def differences(sim: Any, real: Any, path: str = "") -> list[str]:
    """Where two normalised answers differ: `path: sim X, real Y` lines."""
    if isinstance(sim, dict) and isinstance(real, dict):
        return [
            line
            for key in sorted(sim.keys() | real.keys())
            for line in differences(
                sim.get(key, "<absent>"), real.get(key, "<absent>"), f"{path}.{key}"
            )
        ]
    if isinstance(sim, list) and isinstance(real, list) and len(sim) == len(real):
        return [
            line
            for i, (s, r) in enumerate(zip(sim, real, strict=True))
            for line in differences(s, r, f"{path}[{i}]")
        ]
    return [] if sim == real else [f"{path}: sim {sim!r}, real {real!r}"]
