"""Benchmark: CPU per AI call of ``core.ai.AiClient``, this checkout against a baseline, in one run.

Run: ``python bench/ai_client.py [--baseline REV] [--calls 2000] [--concurrency 16] [--rounds 3]``;
``--smoke`` for a run of a few seconds that only checks it works (the test suite runs it).

Three processes besides this one, all gevent-patched as ``run.py`` is: a zero-latency
OpenAI-compatible server (``POST .../chat/completions`` answered at once, HTTP/1.1 keep-alive, a
fixed chat completion), and one client process per code tree — this checkout's and the code at
``--baseline`` (default: the commit before the AI client moved to ``http.client`` and
``sansio/ai_http.py``; ``git archive`` of it, in a temporary directory). Each client builds the
tree's own ``AiClient`` (``AI_MAX_RETRIES=0``, ``AI_TIMEOUT=10``, ``AI_MAX_IN_FLIGHT`` =
``--concurrency``), applies ``core.heap.settle()`` as ``run.py`` does after start, warms up, and per
round makes ``--calls`` calls of ``reply()`` (a system prompt and ten messages of history, as the
pipeline sends) from ``--concurrency`` greenlets. Rounds alternate which client goes first, so a slow
moment of the machine hits both.

Figures per client: **CPU per call** (the client process's user + system time, ``getrusage``, over
the round's calls: the figure the target is about, and the least moved by other load) and calls/s.
Target: this checkout's CPU per call (median of the rounds) <= 1.2x the baseline's. Prints PASS/MISS
and exits 0 whatever the figures; non-zero when something fails to run. ``--smoke`` (100 calls, one
round) judges nothing. Results are recorded in ``docs/performance.md``.
"""

from __future__ import annotations

import sys

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import gevent.socket  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._harness import Bench, Child, Verdict, git_tree  # noqa: E402

BASELINE = "4eb5d2f"  # "sansio/backoff: one policy for every retry loop", the openai client over our transport
TARGET = 1.2
MESSAGES = [{"role": "system", "content": "You are the shop's assistant. Answer briefly."}] + [
    {"role": "user" if n % 2 == 0 else "assistant", "content": f"message number {n} of the conversation, q{n}"}
    for n in range(10)
] + [{"role": "user", "content": "do you deliver on Saturdays? q11"}]


# -- the AI server (its own process) -----------------------------------------------------------------


def serve() -> None:
    """Answer chat completions at once on 127.0.0.1 until stdin closes; prints the port first."""
    from gevent.server import StreamServer

    answer = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-model",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "a q11"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)
                + answer)

    def handle(sock: Any, _peer: Any) -> None:
        rfile = sock.makefile("rb")
        try:
            while rfile.readline(65537):  # the request line; b"" when the client closed
                length = 0
                while (line := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                rfile.read(length)
                sock.sendall(response)
        except (OSError, ValueError):
            pass
        finally:
            rfile.close()
            sock.close()

    listener = socket.socket()
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    server = StreamServer(listener, handle)
    server.start()
    print(server.server_port, flush=True)
    gevent.socket.wait_read(sys.stdin.fileno())  # EOF: the parent is done
    server.stop(timeout=1)


# -- a client (its own process, one per code tree) --------------------------------------------------


def client(tree: str, url: str, calls: int, concurrency: int, warmup: int) -> None:
    """Build the tree's AiClient; on each line of stdin run one round and print its figures."""
    sys.path[:] = [tree] + [p for p in sys.path if os.path.abspath(p) != ROOT]  # the tree's code, no other
    from core import config, heap
    from core.ai import AiClient

    settings = config.load({}, ai_base_url=url, ai_api_key="bench-key", ai_model="bench-model", ai_timeout=10.0,
                           ai_max_retries=0, ai_max_in_flight=concurrency)
    ai = AiClient(settings)
    pool = gevent.pool.Pool(concurrency)

    def burst(count: int) -> None:
        for _ in range(count):
            pool.spawn(ai.reply, MESSAGES, None, 0.7)
        pool.join(raise_error=True)

    burst(warmup)
    heap.settle()
    print(json.dumps({"ready": True}), flush=True)
    try:
        while sys.stdin.readline():
            usage, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            burst(calls)
            wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
            print(json.dumps({"cpu_us": cpu * 1e6 / calls, "per_s": calls / wall}), flush=True)
    finally:
        ai.close()


# -- the run ----------------------------------------------------------------------------------------


class Talker(Child):
    """A child process of this script speaking JSON lines."""

    def __init__(self, name: str, *args: str) -> None:
        super().__init__(name, [sys.executable, os.path.abspath(__file__), *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def line(self) -> str:
        text = self.proc.stdout.readline()
        if not text:
            raise RuntimeError(f"{self.name} ended (exit code {self.proc.wait()})")
        return text

    def ask(self) -> dict[str, Any]:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return json.loads(self.line())

    def stop(self, timeout: float = 20.0, sig: int | None = None) -> int:
        """Closing its stdin ends it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        code = super().stop(timeout, sig)
        self.proc.stdout.close()
        return code


def run(args: argparse.Namespace, bench: Bench) -> None:
    server = bench.stops(Talker("AI server", "--serve"))
    url = f"http://127.0.0.1:{int(server.line())}/v1"
    common = ["--url", url, "--calls", str(args.calls), "--concurrency", str(args.concurrency),
              "--warmup", str(args.warmup)]
    clients = [bench.stops(Talker("before", "--client", git_tree(args.baseline, bench.path("baseline")), *common)),
               bench.stops(Talker("after", "--client", ROOT, *common))]
    for each in clients:
        each.line()  # ready
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        for each in clients if round_ % 2 == 0 else clients[::-1]:
            results[each.name].append(each.ask())
    report(results, args)


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"{args.calls} calls per round from {args.concurrency} greenlets, {args.rounds} round(s); "
          f"baseline {args.baseline}")
    print(f"{'code':<8} {'CPU µs/call, each round':<32} {'median':>8} {'calls/s':>8}")
    median = {}
    for name, runs in results.items():
        median[name] = statistics.median(r["cpu_us"] for r in runs)
        rounds = " ".join(f"{r['cpu_us']:.0f}" for r in runs)
        print(f"{name:<8} {rounds:<32} {median[name]:8.0f} {statistics.median(r['per_s'] for r in runs):8.0f}")
    ratio = median["after"] / median["before"]
    print(f"CPU per call after / before: {ratio:.2f}x  {Verdict(not args.smoke)(ratio <= TARGET)}  target <= {TARGET}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="the git revision measured as before")
    parser.add_argument("--calls", type=int, default=2000, help="calls per client and round")
    parser.add_argument("--concurrency", type=int, default=16, help="greenlets calling at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300, help="calls before the first round")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: that it runs, not how fast")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="TREE", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    if args.client:
        client(args.client, args.url, args.calls, args.concurrency, args.warmup)
        return 0
    if args.smoke:
        args.calls, args.rounds, args.concurrency, args.warmup = 100, 1, 4, 20
    with Bench("wabot-bench-ai-") as bench:
        run(args, bench)
    if args.smoke:
        print("\nsmoke run: both clients answered every call; the figures are not judged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
