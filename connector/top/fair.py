"""Fair share of the top layer's budget between sites: deficit round-robin.

Every sink call has room for a number of changes (what the rate limit allows in one call). The
room is dealt out in rounds over the sites with changes ready: each round gives every such site
a quantum times its weight, and a site takes what it has up to its credit. A site with a few
changes is served in full in the next call; a storming site takes what the others leave. Credit
a site could not use because it ran out of changes is dropped, so nobody saves up a burst; the
round starts one site further on every call, so rounding never favours the same site.
"""

from __future__ import annotations

from collections.abc import Mapping


class FairShare:
    """Splits each call's room between sites by weight (default weight 1)."""

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self._weights = dict(weights or {})
        self._credit: dict[str, float] = {}
        self._turn = 0

    def weight(self, site: str) -> float:
        return self._weights.get(site, 1.0)

    def split(self, ready: Mapping[str, int], room: int) -> dict[str, int]:
        """How many of its `ready` changes each site sends in a call with `room` changes."""
        sites = sorted(s for s, n in ready.items() if n > 0)
        for site in list(self._credit):
            if site not in sites:
                del self._credit[site]  # idle sites keep no credit
        if not sites or room <= 0:
            return {}
        self._turn = (self._turn + 1) % len(sites)
        order = sites[self._turn :] + sites[: self._turn]
        total_weight = sum(self.weight(s) for s in order)
        quantum = max(1.0, room / total_weight)
        given = dict.fromkeys(order, 0)
        left = room
        while left > 0:
            progressed = False
            for site in order:
                want = ready[site] - given[site]
                if want <= 0:
                    continue
                credit = self._credit.get(site, 0.0) + quantum * self.weight(site)
                take = min(want, int(credit), left)
                given[site] += take
                left -= take
                self._credit[site] = 0.0 if take == want else credit - take
                progressed = progressed or take > 0
                if left == 0:
                    break
            if not progressed and all(ready[s] <= given[s] for s in order):
                break
        return {s: n for s, n in given.items() if n}
