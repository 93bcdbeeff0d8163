"""A simulated OpenStack site that openstacksdk and the `openstack` CLI talk to unmodified.

One process (or thread) per site: Keystone v3, Nova, Cinder and Neutron listings with the
semantics the poller relies on, tens of thousands of objects, and a control API under `/_sim/`
to read truth and stats and to make churn, restart storms and faults. See docs/sim.md.
"""

from __future__ import annotations

from connector.dev.sim.errors import SimError
from connector.dev.sim.server import RunningSim, run_sim, start_sim

__all__ = ["RunningSim", "SimError", "run_sim", "start_sim"]
