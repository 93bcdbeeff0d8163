"""deploy/docker/Dockerfile, read by BuildKit's own parser (the `dockerfile` package wraps it):
multi-stage, the wheel installed, a non-root user, `cascade-connector` as entry point, and every
file it copies from the build context present and not excluded by .dockerignore."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import dockerfile
import pytest

from tests.deploy.conftest import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def problems(text: str, context: Path = ROOT) -> list[str]:
    """What is wrong with a Dockerfile built from `context`; empty when nothing is."""
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        return [f"does not parse: {exc}"]
    found = []
    ignored = dockerignore(context)
    stages: list[str] = []
    user = None
    entrypoint: tuple[str, ...] = ()
    for c in commands:
        where = f"line {c.start_line}: {c.original}"
        if c.cmd not in INSTRUCTIONS:
            found.append(f"{where}: unknown instruction {c.cmd}")
        elif c.cmd == "FROM":
            stages.append(c.value[2] if len(c.value) == 3 and c.value[1].upper() == "AS" else "")
            user, entrypoint = None, ()
        elif c.cmd == "USER":
            user = c.value[0]
        elif c.cmd == "ENTRYPOINT":
            entrypoint = c.value if c.json else ()
        elif c.cmd in ("COPY", "ADD"):
            if len(c.value) < 2:
                found.append(f"{where}: needs a source and a destination")
                continue
            origin = next((f.split("=", 1)[1] for f in c.flags if f.startswith("--from=")), None)
            if origin is not None:
                if origin not in stages[:-1]:
                    found.append(f"{where}: --from={origin} is no earlier stage")
                continue
            for source in c.value[:-1]:
                path = context / source
                if not path.exists():
                    found.append(f"{where}: {source} is not in the build context")
                elif any(fnmatch.fnmatch(source.strip("/"), pattern) for pattern in ignored):
                    found.append(f"{where}: {source} is excluded by .dockerignore")
    if len(stages) < 2:
        found.append("not multi-stage: one FROM")
    if user is None or user.split(":")[0] in ("root", "0"):
        found.append(f"the final stage runs as {user or 'root (no USER)'}")
    if entrypoint[:1] != ("cascade-connector",):
        found.append(f"the entry point is {list(entrypoint)}, not cascade-connector (exec form)")
    return found


def dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")]


def test_the_dockerfile_is_sound() -> None:
    text = DOCKERFILE.read_text()
    assert problems(text) == []
    assert "pip wheel" in text and "--no-index" in text, "the wheel is not built and installed"


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("COPY connector ./connector", "COPY connectors ./connector", "not in the build context"),
        ("COPY connector ./connector", "COPY tests ./tests", "excluded by .dockerignore"),
        ("USER 10001:10001", "USER root", "runs as root"),
        ("USER 10001:10001", "", "runs as root (no USER)"),
        ("--from=build", "--from=builder", "is no earlier stage"),
        ('ENTRYPOINT ["cascade-connector"', 'ENTRYPOINT ["python"', "not cascade-connector"),
        ("RUN python -m venv", "RUNS python -m venv", "unknown instruction RUNS"),
        ('CMD ["--help"]', "RUN <<EOF\necho", "does not parse: unterminated heredoc"),
    ],
)
def test_a_broken_dockerfile_fails(old: str, new: str, problem: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    found = problems(text.replace(old, new))
    assert any(problem in p for p in found), found
