"""The chaos suite: the connector's real processes under crashes, broker outages, site faults
and fuzzed input, each scenario checking what must hold and measuring what it costs.

Every scenario is a function taking its sizes (the full run in `bench/chaos.py`, small ones in
the tests) and returning a `Outcome`: the problems found (none when it held) and the figures
measured. The processes are the `cascade-connector` commands a user runs; the sims run in this
process; Kafka and PostgreSQL are real.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    """What one scenario found: `problems` empty means every check held."""

    scenario: str
    figures: dict[str, float | int | str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: per-round figures (one dict per round), for scenarios that repeat
    rounds: list[dict[str, float | int | str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The outcome as plain-text lines: figures, rounds, then problems or OK."""
        out = [f"{self.scenario}: {'OK' if self.ok else 'FAILED'}"]
        out += [f"  {name}: {_show(value)}" for name, value in self.figures.items()]
        for i, row in enumerate(self.rounds, 1):
            out.append(f"  round {i}: " + ", ".join(f"{k} {_show(v)}" for k, v in row.items()))
        out += [f"  PROBLEM: {problem}" for problem in self.problems]
        return out


def _show(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return value
