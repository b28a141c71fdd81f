"""A WhatsApp network simulator for tests and demos (not a production component).

It runs as its own process (``simulator.main.serve``) or embedded (``Simulator(...).start()``); bots
reach it over a real TCP socket through ``transports.simulator.SimulatorTransport``, so an injected
outage is a real disconnect. The protocol and control API are described in ``docs/simulator.md``.
"""

from simulator.server import Simulator, SimulatorError

__all__ = ["Simulator", "SimulatorError"]
