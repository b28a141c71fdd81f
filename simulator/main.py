"""Run the simulator as its own process until SIGTERM or SIGINT.

``python run.py simulator`` calls ``serve(settings)``; ``python -m simulator.main`` does the same on its
own (it patches gevent itself). The transport socket binds WA_SIMULATOR_ADDR (127.0.0.1:7300 by
default), the control API the next port. Pairings are kept in DATA_DIR/simulator/state.json, so a
restarted simulator still knows the bots' device credentials.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import gevent
import gevent.event

from simulator.protocol import split_addr
from simulator.server import Simulator

log = logging.getLogger(__name__)


def build(settings: Any, **options: Any) -> Simulator:
    """A Simulator configured from settings; ``options`` override Simulator's keyword arguments."""
    host, port = split_addr(settings.wa_simulator_addr)
    options.setdefault("state_file", os.path.join(settings.data_dir, "simulator", "state.json"))
    return Simulator(host, port, **options)


def serve(settings: Any, **options: Any) -> None:
    """Start the simulator and block until SIGTERM/SIGINT, then stop it cleanly."""
    stopping = gevent.event.Event()
    sim = build(settings, **options).start()
    handlers = [gevent.signal_handler(sig, stopping.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    log.info("simulator running", extra={"address": sim.address, "control_url": sim.control_url})
    try:
        stopping.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        sim.stop()
        log.info("simulator stopped")


if __name__ == "__main__":  # pragma: no cover - manual use
    from gevent import monkey

    monkey.patch_all()

    from core import config, logs

    _settings = config.load()
    logs.setup(_settings.log_level)
    serve(_settings)
