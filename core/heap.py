"""The process's garbage-collector settings once it has started (``run.py``, and the benchmarks that
stand in for it).

Fanning one event out to thousands of subscribers, or a message through a dozen actors and greenlets,
allocates many short-lived objects; with the default thresholds that triggered full collections over
the whole heap again and again (a third of the web process's CPU in bench/streams.py, a tenth of the
bots' process's in bench/pipeline.py). Everything long-lived that exists after start-up is moved out
of the collector's way, and collections run less often.
"""

from __future__ import annotations

import gc


def settle() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
