"""The configuration reference names every setting the code has."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from connector.config import Settings

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    sections = {m.group(1): m.end() for m in re.finditer(r"^### \[(\w+)\]$", text, re.M)}
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        assert section in sections, f"[{section}] missing from {DOC.name}"
        start = sections[section]
        end = min([p for p in sections.values() if p > start], default=len(text))
        for name in model.model_fields:
            assert f"| `{name}` |" in text[start:end], f"{section}.{name} missing from {DOC.name}"
