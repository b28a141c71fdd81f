"""Benchmark: what validating requests through the API's models costs, before and after, in one run.

Run: ``python bench/api.py [--baseline REV] [--requests 1000] [--rounds 3]``; ``--smoke`` for a run of a
few seconds that only checks it works (the test suite runs it).

Two web processes (``python run.py web``) serve the same embedded PostgreSQL, started here in a
temporary directory: this checkout's code, and the code at ``--baseline`` (default: the last commit
before the API's routes were declared through models; ``git archive`` of it, in a temporary
directory). For each of ``GET /api/v1/bots/<id>``, ``POST /api/v1/bots/<id>/messages`` and ``PUT
/api/v1/bots/<id>/rules`` with 50 rules, each process in turn serves ``--requests`` requests from one
keep-alive client (rounds alternate the two, so a slow moment of the machine hits both):

- **server time**: the ``Server-Timing`` header (request start to response), p50 and p99;
- **requests/s** as the client saw them;
- **CPU per request** of the server process: its user + system time (``/proc/<pid>/stat``) over the
  requests — the figure the target is about, and the least moved by other load.

Target: this checkout's CPU per request <= 1.1x the baseline's, for each route. Prints PASS/MISS and
exits 0 whatever the figures; non-zero when something fails to run. ``--smoke`` (50 requests, one
round) judges nothing. Results are recorded in ``docs/performance.md`` ("API").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import requests  # noqa: E402

from bench._harness import (  # noqa: E402
    UNREACHED_LIMITS,
    Bench,
    Child,
    Verdict,
    cli_tenant,
    free_port,
    git_tree,
    percentile,
    print_log_tails,
    proc_cpu,
)

BASELINE = "750b6d2"  # "Dashboard: a conversation opens scrolled to its latest message", before the models
TARGET = 1.1


class Web(Child):
    """``python run.py web`` of one code tree against the shared database."""

    def __init__(self, name: str, tree: str, env: dict[str, str], work: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(name, [sys.executable, os.path.join(tree, "run.py"), "web"], cwd=tree,
                         env={**env, "PORT": str(port)}, log=os.path.join(work, f"{name}.log"))


RULES = {"rules": [{"match": "keyword" if n % 2 else "regex", "pattern": f"topic {n}" if n % 2 else rf"order\s+#?{n}\b",
                    "reply": f"Answer number {n}, with a little text."} for n in range(50)]}


def requests_for(bot: str) -> dict[str, tuple[str, str, Any]]:
    return {"GET bot": ("GET", f"/api/v1/bots/{bot}", None),
            "POST message": ("POST", f"/api/v1/bots/{bot}/messages", {"to": "+49 151 2345 6789", "text": "hello"}),
            "PUT 50 rules": ("PUT", f"/api/v1/bots/{bot}/rules", RULES)}


def measure(web: Web, key: str, method: str, path: str, body: Any, count: int) -> dict[str, Any]:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    for _ in range(20):  # warm
        http.request(method, web.url + path, json=body, timeout=10)
    server, started, cpu = [], time.perf_counter(), proc_cpu(web.pid)
    for _ in range(count):
        response = http.request(method, web.url + path, json=body, timeout=10)
        if response.status_code >= 300:
            raise RuntimeError(f"{web.name}: {method} {path} -> {response.status_code} {response.text[:200]}")
        server.append(float(re.search(r"app;dur=([\d.]+)", response.headers["Server-Timing"]).group(1)))
    elapsed = time.perf_counter() - started
    return {"server": server, "rps": count / elapsed, "cpu_ms": (proc_cpu(web.pid) - cpu) * 1000 / count}


def report(results: dict[str, dict[str, list[dict[str, Any]]]], verdict: Verdict) -> None:
    print(f"\n{'route':<14} {'code':<9} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} {'CPU ms/req':>11}   after / before")
    for route, by_code in results.items():
        cpu = {}
        for code, runs in by_code.items():
            server = [t for run in runs for t in run["server"]]
            cpu[code] = statistics.median(run["cpu_ms"] for run in runs)
            rps = statistics.median(run["rps"] for run in runs)
            print(f"{route:<14} {code:<9} {percentile(server, 50):7.2f} {percentile(server, 99):7.2f} {rps:7.0f}"
                  f" {cpu[code]:11.3f}")
        ratio = cpu["after"] / cpu["before"]
        print(f"{'':<14} CPU per request after / before: {ratio:.2f}x  {verdict(ratio <= TARGET)}  target <= {TARGET}x")


def run(args: argparse.Namespace, bench: Bench) -> None:
    db = bench.database(from_env=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PORT"))}
    env.update(DATABASE_URL=db.app_url, DATA_DIR=bench.path("data"), LOG_LEVEL="warning",
               PYTHONUNBUFFERED="1", HTTP_MAX_BODY="1048576", **UNREACHED_LIMITS)
    _tenant, key, _out = cli_tenant({**env, "DATABASE_OWNER_URL": db.owner_url}, "API bench")
    webs = [bench.stops(Web("before", git_tree(args.baseline, bench.path("baseline")), env, bench.work)),
            bench.stops(Web("after", ROOT, env, bench.work))]
    for web in webs:
        web.wait_answering(web.url + "/readyz", 60)
    bot = requests.post(webs[1].url + "/api/v1/bots", json={"name": "bench"}, timeout=10,
                        headers={"Authorization": f"Bearer {key}"}).json()["id"]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for round_ in range(args.rounds):
        for route, (method, path, body) in requests_for(bot).items():
            for web in (webs if round_ % 2 == 0 else webs[::-1]):
                results.setdefault(route, {}).setdefault(web.name, []).append(
                    measure(web, key, method, path, body, args.requests))
    report({route: dict(sorted(by.items(), key=lambda kv: kv[0] != "before")) for route, by in results.items()},
           Verdict(not args.smoke))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="the git revision measured as before")
    parser.add_argument("--requests", type=int, default=1000, help="requests per route, process and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: that it runs, not how fast")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rounds = 50, 1
    with Bench("wabot-bench-api-") as bench:
        bench.on_failure(lambda: print_log_tails(bench.work))  # the web processes' logs, before they go
        run(args, bench)
    if args.smoke:
        print("\nsmoke run: both processes served every route; the figures are not judged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
