"""The fault soak (issue 15): the deployment an operator runs, under traffic and a seeded schedule of
faults, with its whole history checked at the end.

    python bench/soak.py [--duration 180] [--rate 3] [--bots 4] [--customers 6] [--seed 1] [--json FILE]

What runs, every part a real server on 127.0.0.1 (bench/_deploy.py): a PostgreSQL server of its own,
PgBouncer in transaction pooling mode, a TCP fault proxy in front of PostgreSQL (every connection of
the platform goes through it: PgBouncer's and the direct ones of ``DATABASE_DIRECT_URL``), two
``run.py web`` and two ``run.py supervisor`` processes, nginx in front of the web processes with the
configuration docs/operations.md documents, the WhatsApp simulator, an OpenAI-compatible server and a
webhook receiver per tenant (both in this process).

Traffic (``--rate`` inbound messages per second over ``--bots`` bots of two tenants, ``--customers``
customers per bot): customers write to the bots (keyword messages answered by a rule, others by the
AI), API sends through nginx, API readers, and per tenant two SSE subscribers (one of them slow) and
a WebSocket subscriber, which hang up and resume all the time.

Faults, one at a time in a seeded order (every kind once in the first round, then at random until
``--duration`` is over), each held for a few seconds and then healed: SIGKILL and SIGTERM of a
supervisor and of a web process (started again when healed); PostgreSQL restarts (fast, immediate);
a PgBouncer restart; latency, resets and a black hole in the proxy in front of PostgreSQL; the
simulator's outage, hang, replaced, temporary ban and logged-out faults (an operator starts a
replaced bot again and pairs a logged-out one anew: that is their heal); the AI server answering
500s, 429s with Retry-After, or too late; the webhook receivers down. After each heal the soak waits
until the deployment is whole again — every bot connected, every process ready, no supervisor over
its fair share of the bots, a probe message answered end to end — and records how long that took
(the recovery time of the kind); a deployment not whole within ``RECOVERY_BOUND`` seconds is a
violation.

At the end the traffic stops, the backlog drains, every subscriber catches up, and the history
checker (bench/_history.py) reads what every party recorded: the simulator (inbound messages handed
over, what reached each customer's phone), the database (messages, outbox, events, webhook
deliveries), the subscribers and the receivers. Resources of every platform process (greenlets, OS
threads, file descriptors and pool connections summed per role, RSS per role) are compared with
their baselines taken before the first fault.

Prints the fault log (timestamped), the figures — load held, faults by kind with recovery p50/max,
violations by invariant, resources — and exits 1 on any violation or resource above its baseline,
2 when the run itself broke. ``--smoke``: two bots, about 25 s, three faults. Results:
docs/reliability.md.
"""

import sys

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

# ``python bench/soak.py`` puts bench/ on sys.path, not the project root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from db.green import make_psycopg2_green  # noqa: E402

make_psycopg2_green()

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import psycopg2  # noqa: E402
import requests  # noqa: E402

from bench import _history as history  # noqa: E402
from bench._deploy import Deployment  # noqa: E402
from bench._soak_clients import SseSubscriber, Subscriber, WsSubscriber  # noqa: E402
from tests.openai_server import OpenAiServer, reply, status  # noqa: E402
from tests.webhook_receiver import Receiver  # noqa: E402

RECOVERY_BOUND = 60.0  # seconds from a heal until the deployment is whole again (docs/reliability.md)
DRAIN_BOUND = 90.0  # seconds the backlog may take to drain after the traffic stops
# Seconds with no new webhook delivery before the history is read: the simulator's receipts (delivered
# after 1 s, read 2 s later) keep making facts after the last send, and a delivery made while the checker
# reads would reach a receiver after the database was read (the fifth run's webhook_tenant "strangers").
DRAIN_QUIET = 5.0
AI_TIMEOUT = 1.5
RULE_REPLY = "Fresh bread until noon!"
AI_REPLY = "Thanks for asking: we open at eight."
RSS_SLACK = 0.10
# Per role, what "back at the baseline" allows (docs/reliability.md): a few greenlets and descriptors of
# work in flight at the moment of reading; PgBouncer keeps up to its pool size of server connections.
COUNT_SLACK = {"greenlets": 10, "threads": 2, "fds": 4, "pool": 2, "backends": 10, "ai_idle": 16}

# Every kind of fault, in the order of the list; the seed shuffles them.
KINDS = (
    "supervisor_sigkill", "supervisor_sigterm", "web_sigkill", "web_sigterm",
    "postgres_restart_fast", "postgres_restart_immediate", "pgbouncer_restart",
    "db_latency", "db_reset", "db_black_hole",
    "network_outage", "network_hang", "session_replaced", "temporary_ban", "logged_out",
    "ai_500", "ai_429", "ai_timeout", "webhooks_down",
)
SMOKE_KINDS = ("web_sigkill", "db_reset", "ai_500")
# Over as soon as injected: nothing to hold, their recovery runs from the injection.
INSTANT = frozenset({"postgres_restart_fast", "postgres_restart_immediate", "pgbouncer_restart", "db_reset"})


def now() -> float:
    return time.monotonic()


# -- the plan ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    hold: float  # seconds between injecting and healing
    target: int  # which process or bot (an index, taken modulo what there is)


def plan(rng: random.Random, kinds: tuple[str, ...], rounds_after_first: int) -> list[Fault]:
    """Every kind once, shuffled; then ``rounds_after_first`` more drawn at random."""
    first = list(kinds)
    rng.shuffle(first)
    chosen = first + [rng.choice(kinds) for _ in range(rounds_after_first)]
    faults = []
    for kind in chosen:
        # A receiver down for less than the first retry's delay (5 s, -10 %): its deliveries get
        # through on their second attempt, not five minutes later on their third.
        hold = rng.uniform(1.5, 3.5) if kind == "webhooks_down" else rng.uniform(1.5, 4.0)
        faults.append(Fault(kind, 0.0 if kind in INSTANT else round(hold, 2), rng.randrange(1000)))
    return faults


# -- records ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bot:
    id: str
    tenant: str
    key: str
    customers: list[str]


@dataclasses.dataclass
class Tenant:
    id: str
    key: str
    receiver: Receiver
    endpoint_id: str = ""
    bots: list[str] = dataclasses.field(default_factory=list)
    link: str = ""  # the admin's set-password link (path), for the dashboard reader


@dataclasses.dataclass
class Counters:
    inbound: int = 0
    inbound_refused: int = 0
    api_sends: int = 0
    api_send_failed: int = 0
    reads: int = 0
    read_failed: int = 0
    read_failed_in_fault: int = 0
    pages: int = 0
    page_failed: int = 0
    page_failed_in_fault: int = 0
    probes: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.dir:
            os.makedirs(args.dir, exist_ok=True)
        self.rng = random.Random(args.seed)
        self.started = now()
        self.stop_traffic = gevent.event.Event()
        self.tasks = gevent.pool.Group()  # every greenlet the soak starts
        self.workers: list[gevent.Greenlet] = []  # the traffic's, checked for failures
        self.counters = Counters()
        self.handed: list[history.Handed] = []
        self.accepted_sends: list[history.Accepted] = []
        self.sim_outbox: dict[str, dict[str, dict]] = collections.defaultdict(dict)  # bot -> network id -> record
        self.fault_log: list[str] = []
        self.recoveries: dict[str, list[float]] = collections.defaultdict(list)
        self.unrecovered: list[str] = []
        self.in_fault = False
        self.missing = ""  # what the last check of the deployment's wholeness found missing
        self.subscribers: list[tuple[Subscriber, str]] = []  # (subscriber, its tenant)
        self.tenants: list[Tenant] = []
        self.bots: list[Bot] = []
        self.ai = OpenAiServer().start()
        self.ai.default = reply(AI_REPLY)
        self.deploy: Deployment | None = None
        self.browsers: list[requests.Session] = []
        self.http = requests.Session()

    # -- logging ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        line = f"{now() - self.started:8.2f}  {text}"
        self.fault_log.append(line)
        print(line, flush=True)
        if self.args.dir:  # beside the deployment's logs, also when the run breaks before --json is written
            with open(os.path.join(self.args.dir, "soak.log"), "a") as f:
                f.write(line + "\n")

    # -- HTTP ------------------------------------------------------------------------------------

    @property
    def d(self) -> Deployment:
        assert self.deploy is not None
        return self.deploy

    def api(self, method: str, path: str, key: str, body: Any = None, timeout: float = 10) -> requests.Response:
        return self.http.request(method, self.d.url + "/api/v1" + path, json=body, timeout=timeout,
                                 headers={"Authorization": f"Bearer {key}"})

    def api_ok(self, method: str, path: str, key: str, body: Any = None, tries: float = 30) -> Any:
        """A set-up or heal call that must succeed: retried while the deployment is recovering."""
        deadline = now() + tries
        while True:
            try:
                answer = self.api(method, path, key, body)
                if answer.status_code < 400:
                    return answer.json() if answer.content else None
                if answer.status_code < 500 and answer.status_code != 429:
                    raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
            except requests.RequestException:
                pass
            if now() > deadline:
                raise RuntimeError(f"{method} {path} kept failing for {tries:g} s")
            gevent.sleep(0.3)

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.http.request(method, self.d.control_url + path, json=body if body is not None else {},
                                   timeout=10)
        answer.raise_for_status()
        return answer.json()

    # -- set-up ----------------------------------------------------------------------------------

    def start(self) -> None:
        env = {
            "AI_BASE_URL": self.ai.base_url + "/v1", "AI_API_KEY": "soak", "AI_TIMEOUT": str(AI_TIMEOUT),
            "AI_MAX_RETRIES": "1", "AI_DEBOUNCE": "0.3", "AI_BREAKER_RESET": "3",
            # The soak's bots answer many customers a minute; WhatsApp's pace (20/min) would make the
            # backlog, not the faults, the story.
            "BOT_SEND_RATE": "600", "BOT_SEND_BURST": "50",
            "OUTBOX_RETRY_BASE": "1",
            # nginx keeps idle upstream connections, each a waiting handler greenlet: closed after 5 s
            # idle, they are gone when the resources are read after the drain.
            "HTTP_KEEPALIVE_TIMEOUT": "5",
        }
        directory = os.path.join(self.args.dir, "deploy") if self.args.dir else None
        if directory and os.path.exists(directory) and os.listdir(directory):
            raise RuntimeError(f"{directory} is not empty: a kept run's files; choose another --dir")
        self.deploy = Deployment(env=env, directory=directory, db_proxy=True)
        self.say(f"deployment up: nginx {self.d.url}, webs {self.d.web_ports}, seed {self.args.seed}")
        for i, name in enumerate(("Soak Bakery", "Soak Florist")):
            out = self.d.cli("create-tenant", name, "--admin-email", f"owner{i}@soak.test")
            found = [re.search(pattern, out) for pattern in (
                r"tenant (\S+) created", r"API key \(shown once, store it now\): (\S+)", r"(/auth/link/\S+)")]
            if not all(found):
                raise RuntimeError(f"create-tenant said: {out}")
            tenant_id, key, link = (m.group(1) for m in found if m)
            receiver = Receiver()
            tenant = Tenant(tenant_id, key, receiver, link=link)
            created = self.api_ok("POST", "/webhooks", key, {
                "url": receiver.url(), "event_types": ["message.*", "bot.*", "outbox.*"]})
            tenant.endpoint_id = created["id"]
            self.tenants.append(tenant)
        for i in range(self.args.bots):
            tenant = self.tenants[i % len(self.tenants)]
            created = self.api_ok("POST", "/bots", tenant.key, {"name": f"bot {i}"})
            bot = Bot(created["id"], tenant.id, tenant.key,
                      [f"49151{i:03d}{c:04d}" for c in range(self.args.customers)])
            self.api_ok("PUT", f"/bots/{bot.id}/rules", bot.key, {"rules": [
                {"match": "keyword", "pattern": "bread", "reply": RULE_REPLY}]})
            self.api_ok("PUT", f"/bots/{bot.id}/ai", bot.key, {"ai": {"enabled": True, "history": 2}})
            tenant.bots.append(bot.id)
            self.bots.append(bot)
        for bot in self.bots:
            self.pair(bot)
        # Signed in before the baseline: the first password hash starts a web process's hashing threads.
        self.browsers = [self.sign_in(tenant) for tenant in self.tenants]
        self.wait_whole("set-up", RECOVERY_BOUND)
        self.say(f"{len(self.bots)} bots paired and connected")

    def pair(self, bot: Bot) -> None:
        self.api_ok("POST", f"/bots/{bot.id}/start", bot.key)
        deadline = now() + 30
        while True:
            try:
                state = self.sim("GET", f"/bots/{bot.id}")
            except requests.HTTPError:
                state = {}
            if state.get("connected"):
                return
            if state.get("qr"):
                try:
                    self.sim("POST", f"/bots/{bot.id}/scan")
                    return
                except requests.HTTPError:
                    pass  # the code rotated meanwhile
            if now() > deadline:
                raise RuntimeError(f"bot {bot.id} showed no QR code within 30 s")
            gevent.sleep(0.2)

    # -- health ----------------------------------------------------------------------------------

    def connected(self) -> bool:
        """Every bot connected, as the network sees it and as the API says."""
        for bot in self.bots:
            try:
                if not self.sim("GET", f"/bots/{bot.id}").get("connected"):
                    return False
            except requests.RequestException:
                return False
        for tenant in self.tenants:
            try:
                answer = self.api("GET", "/bots", tenant.key, timeout=3)
            except requests.RequestException:
                return False
            if answer.status_code != 200:
                return False
            mine = {b["id"]: b["state"] for b in answer.json()["bots"]}
            if any(mine.get(bot) != "connected" for bot in tenant.bots):
                return False
        return True

    def ready(self) -> bool:
        for url in self.d.health_urls.values():
            try:
                if self.http.get(url + "/readyz", timeout=3).status_code != 200:
                    return False
            except requests.RequestException:
                return False
        return True

    def balanced(self) -> bool:
        """No supervisor drives more bots than its fair share. One that came back takes its share from
        the others a moment after it is ready: they hand bots back and those reconnect there. Until then
        the deployment is not whole — in the sixth 30-minute run a bot was handed over right after
        "whole again", and the next fault found it not connected."""
        supervisors = [url for name, url in self.d.health_urls.items() if name.startswith("supervisor")]
        share = math.ceil(len(self.bots) / max(len(supervisors), 1))
        for url in supervisors:
            try:
                metrics = _metrics(self.http.get(url + "/metrics", timeout=3).text)
            except requests.RequestException:
                return False
            if metrics.get("bot_transports_live", 0) > share:
                return False
        return True

    def probe(self, timeout: float) -> bool:
        """A customer's message to every bot answered end to end within ``timeout``."""
        jobs = [self.tasks.spawn(self.probe_one, bot, timeout) for bot in self.bots]
        gevent.joinall(jobs)
        return all(job.value for job in jobs)

    def probe_one(self, bot: Bot, timeout: float) -> bool:
        customer = f"49160{self.counters.probes:07d}"
        self.counters.probes += 1
        if not self.hand(bot, customer, "bread please (probe)"):
            return False
        deadline = now() + timeout
        while now() < deadline:
            try:
                if self.sim("GET", f"/bots/{bot.id}/outbox?to={customer}")["messages"]:
                    return True
            except requests.RequestException:
                pass
            gevent.sleep(0.2)
        return False

    def whole(self, deadline: float) -> bool:
        self.missing = ""
        while now() < deadline:
            if not self.connected():
                self.missing = "a bot not connected (or the API not answering)"
            elif not self.ready():
                self.missing = "a process not ready"
            elif not self.balanced():
                self.missing = "a supervisor holding more than its share of the bots (a handover under way)"
            elif not self.probe(min(10.0, max(0.5, deadline - now()))):
                self.missing = "a probe message not answered"
            else:
                return True
            gevent.sleep(0.25)
        return False

    def wait_whole(self, what: str, bound: float) -> float | None:
        began = now()
        if self.whole(began + bound):
            return now() - began
        raise RuntimeError(f"the deployment was not whole within {bound:g} s after {what}")

    # -- traffic ---------------------------------------------------------------------------------

    def hand(self, bot: Bot, customer: str, text: str) -> bool:
        try:
            answer = self.sim("POST", f"/bots/{bot.id}/inbound", {"from": customer, "text": text})
        except requests.RequestException:
            self.counters.inbound_refused += 1
            return False
        self.handed.append(history.Handed(bot.id, answer["id"], customer))
        self.counters.inbound += 1
        return True

    def customers_write(self) -> None:
        n = 0
        while not self.stop_traffic.wait(self.rng.expovariate(self.args.rate)):
            bot = self.rng.choice(self.bots)
            customer = self.rng.choice(bot.customers)
            n += 1
            text = f"bread #{n}" if self.rng.random() < 0.6 else f"when do you open? #{n}"
            self.hand(bot, customer, text)

    def api_sends(self) -> None:
        n = 0
        while not self.stop_traffic.wait(self.rng.uniform(0.5, 1.5)):
            bot = self.rng.choice(self.bots)
            customer = self.rng.choice(bot.customers)
            n += 1
            try:
                answer = self.api("POST", f"/bots/{bot.id}/messages", bot.key,
                                  {"to": customer, "text": f"Your order #{n} is ready."}, timeout=5)
            except requests.RequestException:
                self.counters.api_send_failed += 1
                continue
            if answer.status_code == 202:
                self.counters.api_sends += 1
                self.accepted_sends.append(history.Accepted(bot.id, answer.json()["outbox_id"]))
            else:  # 502/503 while a web process or the database is down: the client retries later
                self.counters.api_send_failed += 1

    def readers(self) -> None:
        paths = ["/bots", "/outbox?state=dead", "/tenant"]
        while not self.stop_traffic.wait(self.rng.uniform(0.2, 0.6)):
            bot = self.rng.choice(self.bots)
            path = self.rng.choice([*paths, f"/bots/{bot.id}/conversations"])
            try:
                ok = self.api("GET", path, bot.key, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            self.counters.reads += 1
            if not ok:
                self.counters.read_failed += 1
                self.counters.read_failed_in_fault += self.in_fault

    def sign_in(self, tenant: Tenant) -> requests.Session:
        """The tenant's admin, signed in through the set-password link: a dashboard session."""
        browser = requests.Session()
        page = browser.get(self.d.url + tenant.link, timeout=10)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        if page.status_code != 200 or token is None:
            raise RuntimeError(f"the set-password page answered {page.status_code}")
        password = "soak bread and butter 1"
        signed_in = browser.post(self.d.url + tenant.link, timeout=10, data={
            "csrf_token": token.group(1), "password": password, "password_again": password})
        if not signed_in.url.endswith("/app/inbox"):
            raise RuntimeError(f"signing in ended at {signed_in.url} ({signed_in.status_code})")
        return browser

    def dashboard_reader(self, browser: requests.Session) -> None:
        """A signed-in admin reading the dashboard's pages."""
        pages = ["/app/inbox", "/app/bots", "/app/outbox", "/app/events", "/app/webhooks"]
        while not self.stop_traffic.wait(self.rng.uniform(0.5, 1.5)):
            try:
                answer = browser.get(self.d.url + self.rng.choice(pages), timeout=5, allow_redirects=False)
                ok = answer.status_code == 200
            except requests.RequestException:
                ok = False
            self.counters.pages += 1
            if not ok:
                self.counters.page_failed += 1
                self.counters.page_failed_in_fault += self.in_fault

    def collect_sim_outbox(self) -> None:
        """The simulator keeps each bot's last 1,000 sent messages: read them before they roll off
        (and once more after the drain)."""
        while not self.stop_traffic.wait(5):
            self.read_sim_outbox()

    def read_sim_outbox(self) -> None:
        for bot in self.bots:
            try:
                for record in self.sim("GET", f"/bots/{bot.id}/outbox")["messages"]:
                    self.sim_outbox[bot.id].setdefault(record["id"], record)
            except requests.RequestException:
                pass

    def start_traffic(self) -> None:
        for tenant in self.tenants:
            subs: list[Subscriber] = [
                SseSubscriber(f"sse-{tenant.id[:8]}", self.d.url, tenant.key, random.Random(self.rng.random()),
                              self.stop_traffic),
                SseSubscriber(f"sse-slow-{tenant.id[:8]}", self.d.url, tenant.key,
                              random.Random(self.rng.random()), self.stop_traffic, slow=True),
                WsSubscriber(f"ws-{tenant.id[:8]}", self.d.url, tenant.key, random.Random(self.rng.random()),
                             self.stop_traffic),
            ]
            for sub in subs:
                self.subscribers.append((sub, tenant.id))
                self.workers.append(self.tasks.spawn(sub.sessions))
        for work in (self.customers_write, self.api_sends, self.readers, self.collect_sim_outbox):
            self.workers.append(self.tasks.spawn(work))
        for browser in self.browsers:
            self.workers.append(self.tasks.spawn(self.dashboard_reader, browser))

    def check_workers(self) -> None:
        """A traffic greenlet that died stopped its part of the load: the run is broken."""
        for worker in self.workers:
            if worker.dead and worker.exception is not None:
                raise RuntimeError(f"a traffic greenlet failed: {worker.exception!r}")

    # -- faults ----------------------------------------------------------------------------------

    def run_faults(self, faults: list[Fault], until: float) -> None:
        for i, fault in enumerate(faults):
            if now() >= until and i >= len(self.args.kinds):
                break
            self.fault(fault)
            self.stop_traffic.wait(self.rng.uniform(0.5, 2.0))  # quiet between faults

    def fault(self, fault: Fault) -> None:
        inject, heal = self.fault_actions(fault)
        self.say(f"fault {fault.kind} (hold {fault.hold:g} s): {inject()}")
        self.in_fault = True
        gevent.sleep(fault.hold)
        self.say(f"heal {fault.kind}: {heal()}")
        began = now()
        ok = self.whole(began + RECOVERY_BOUND)
        self.in_fault = False
        took = now() - began
        if ok:
            self.recoveries[fault.kind].append(took)
            self.say(f"whole again after {fault.kind} in {took:.2f} s")
        else:
            self.unrecovered.append(f"{fault.kind}: not whole within {RECOVERY_BOUND:g} s of the heal"
                                    f" ({self.missing})")
            self.say(f"NOT whole {RECOVERY_BOUND:g} s after {fault.kind}: {self.missing}")

    def fault_actions(self, fault: Fault) -> tuple[Callable[[], str], Callable[[], str]]:
        d, kind = self.d, fault.kind
        bot = self.bots[fault.target % len(self.bots)]
        if kind.startswith(("supervisor_", "web_")):
            role = kind.split("_")[0]
            names = sorted(n for n in d.procs if n.startswith(role))
            name = names[fault.target % len(names)]
            sig = signal.SIGKILL if kind.endswith("sigkill") else signal.SIGTERM

            def stop_process() -> str:
                code = d.signal(name, sig)
                return f"{name} {sig.name}, exit {code}"

            def start_process() -> str:
                d.start(name)
                return f"{name} started"

            return stop_process, start_process
        if kind.startswith("postgres_restart"):
            mode = kind.rsplit("_", 1)[1]
            holder: dict[str, float] = {}

            def restart_postgres() -> str:
                began = now()
                d.restart_postgres(mode)
                holder["took"] = now() - began
                return f"pg_ctl -m {mode} stop, start ({holder['took']:.2f} s)"

            return restart_postgres, lambda: "already running"
        if kind == "pgbouncer_restart":
            return lambda: (d.bouncer.restart(), "pgbouncer restarted")[1], lambda: "already running"
        proxy = d.db_proxy
        assert proxy is not None
        if kind == "db_latency":
            return lambda: (proxy.latency(0.2), "200 ms each way")[1], lambda: (proxy.passing(), "passing")[1]
        if kind == "db_reset":
            return lambda: (proxy.reset(), "every connection reset")[1], lambda: "nothing to undo"
        if kind == "db_black_hole":
            return (lambda: (proxy.black_hole(True), "nothing passes")[1],
                    lambda: (proxy.black_hole(False), "passing")[1])
        if kind == "network_outage":
            return lambda: (self.sim("POST", "/outage"), "simulator down")[1], \
                lambda: (self.sim("POST", "/recover"), "simulator back")[1]
        if kind == "network_hang":
            def hang() -> str:
                self.sim("POST", "/hang", {"on": True})
                self.sim("POST", "/inject", {"kind": "hang"})
                return "every connection and every new one gets no answer"

            return hang, lambda: (self.sim("POST", "/recover"), "simulator answers")[1]
        if kind == "session_replaced":
            return (lambda: (self.sim("POST", f"/bots/{bot.id}/inject", {"kind": "replaced"}),
                             f"bot {bot.id[:8]} replaced")[1],
                    lambda: (self.api_ok("POST", f"/bots/{bot.id}/start", bot.key), "the operator starts it")[1])
        if kind == "temporary_ban":
            def ban() -> str:
                # The simulator ends the live connection with the ban; the bot's logins are refused
                # until it runs out.
                self.sim("POST", f"/bots/{bot.id}/inject", {"kind": "temporary_ban", "expires_in": fault.hold})
                return f"bot {bot.id[:8]} banned for {fault.hold:g} s"

            return ban, lambda: "the ban runs out by itself"
        if kind == "logged_out":
            return (lambda: (self.sim("POST", f"/bots/{bot.id}/inject", {"kind": "logged_out"}),
                             f"bot {bot.id[:8]} logged out")[1],
                    lambda: (self.pair(bot), "the operator pairs it again")[1])
        if kind.startswith("ai_"):
            bad = {"ai_500": status(500), "ai_429": status(429, retry_after="1"),
                   "ai_timeout": reply(AI_REPLY, delay=AI_TIMEOUT + 1)}[kind]

            def break_ai() -> str:
                self.ai.default = bad
                return f"the AI server answers {kind[3:]}"

            def mend_ai() -> str:
                self.ai.default = reply(AI_REPLY)
                return "the AI server answers"

            return break_ai, mend_ai
        if kind == "webhooks_down":
            def down() -> str:
                for t in self.tenants:
                    t.receiver.stop()
                return "every receiver refuses connections"

            def up() -> str:
                for t in self.tenants:
                    t.receiver.start()
                return "receivers back on their ports"

            return down, up
        raise ValueError(f"unknown fault kind {kind!r}")

    # -- the end ---------------------------------------------------------------------------------

    def drain(self) -> float:
        """Seconds until nothing is left in flight (inbound stored and settled, outbox sent, webhook
        deliveries delivered), at most DRAIN_BOUND."""
        began = now()
        while now() - began < DRAIN_BOUND:
            busy = self.query_one(
                "SELECT (SELECT count(*) FROM messages WHERE direction = 'in' AND status = 'stored')"
                " + (SELECT count(*) FROM outbox WHERE state IN ('pending', 'sending'))"
                " + (SELECT count(*) FROM webhook_deliveries WHERE state = 'delivering'"
                "    OR (state = 'pending' AND next_attempt_at < now() + interval '30 seconds'))"
                " + (SELECT count(*) FROM webhook_deliveries"
                f"    WHERE created_at > now() - interval '{DRAIN_QUIET} seconds')")
            stored = self.query_one("SELECT count(*) FROM messages WHERE direction = 'in'")
            if busy == 0 and stored >= len({(h.bot_id, h.wa_message_id) for h in self.handed}):
                return now() - began
            gevent.sleep(0.5)
        return now() - began

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = psycopg2.connect(self.d.pg.superuser_url.replace("/postgres?", "/wabot?"))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def query_one(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def catch_up(self) -> None:
        high = self.query("SELECT tenant_id::text, max(id) FROM events GROUP BY tenant_id")
        per_tenant = dict(high)
        jobs = [self.tasks.spawn(sub.catch_up, int(per_tenant.get(tenant, 0) or 0), 30)
                for sub, tenant in self.subscribers]
        gevent.joinall(jobs)

    def check(self) -> history.Report:
        stored = [history.Stored(str(bot), wa, str(mid), jid.split("@")[0], st, reason, int(seq))
                  for bot, wa, mid, jid, st, reason, seq in self.query(
                      "SELECT m.bot_id, m.wa_message_id, m.id, c.jid, m.status, m.payload->>'ignored',"
                      "       row_number() OVER (PARTITION BY m.bot_id, m.contact_id ORDER BY m.created_at, m.id)"
                      "  FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.direction = 'in'")]
        out = {(str(bot), wa): (str(oid) if oid else None, str(cause) if cause else None, int(seq or 0))
               for bot, wa, oid, cause, seq in self.query(
                   # What a row answers: the inbound messages its answer claimed (messages.outbox_id);
                   # outbox.cause_message_id names the last of the batch, which a rule may have
                   # answered meanwhile.
                   "SELECT o.bot_id, o.wa_message_id, o.id,"
                   "       (SELECT min(m.id::text) FROM messages m WHERE m.outbox_id = o.id AND m.direction = 'in'),"
                   "       row_number() OVER (PARTITION BY o.bot_id, o.to_jid ORDER BY o.created_at, o.id)"
                   "  FROM outbox o")}
        sent = []
        for bot, records in self.sim_outbox.items():
            for network_id, record in records.items():
                if record.get("from_phone"):
                    continue
                outbox_id, cause, committed = out.get((bot, network_id), (None, None, 0))
                sent.append(history.Sent(bot, network_id, record["to"].split("@")[0], float(record["ts"]),
                                         outbox_id, cause, committed))
        events: dict[str, list[int]] = collections.defaultdict(list)
        for tenant, event_id in self.query("SELECT tenant_id::text, id FROM events ORDER BY id"):
            events[tenant].append(int(event_id))
        owner = {i: t for t, ids in events.items() for i in ids}
        streams = [history.StreamLog(sub.name, tenant, tuple((i, owner.get(i)) for i in sub.seen))
                   for sub, tenant in self.subscribers]
        # A delivery waiting for a retry scheduled past the drain (its endpoint failed during a fault;
        # the schedule's third attempt is 5 minutes on) is not lost: counted apart.
        deliveries = [history.Delivery(str(i), str(e), st) for i, e, st in self.query(
            "SELECT id, endpoint_id, CASE WHEN state = 'pending' AND next_attempt_at > now() AND attempts > 0"
            "                             THEN 'retrying' ELSE state END"
            "  FROM webhook_deliveries WHERE type <> 'webhook.test'")]
        hooks = [history.WebhookLog(t.endpoint_id, frozenset(r.webhook_id for r in t.receiver.done))
                 for t in self.tenants]
        facts = [(str(t), key) for t, key in self.query(
            "SELECT m.tenant_id, 'message.in:' || m.id FROM messages m WHERE m.direction = 'in'"
            " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.event_key = 'message.in:' || m.id)")]
        outbox_state = {str(i): (st, err) for i, st, err in self.query("SELECT id, state, last_error FROM outbox")}
        return history.check(self.handed, stored, sent, events, streams, deliveries, hooks,
                             accepted=self.accepted_sends, outbox=outbox_state, facts_without_delivery=facts)

    # -- resources -------------------------------------------------------------------------------

    def resources(self) -> dict[str, dict[str, float]]:
        """Per role (web, supervisor): greenlets, threads, fds and pool connections summed, RSS summed (KB)."""
        totals: dict[str, dict[str, float]] = {}
        for name, url in self.d.health_urls.items():
            role = name.rstrip("0123456789")
            mine = totals.setdefault(role, {"greenlets": 0, "threads": 0, "fds": 0, "pool": 0, "rss_kb": 0})
            metrics = _metrics(self.http.get(url + "/metrics", timeout=5).text)
            pid = self.d.procs[name].pid
            mine["greenlets"] += metrics.get("process_greenlets", 0)
            mine["threads"] += metrics.get("process_os_threads", 0)
            mine["pool"] += metrics.get("db_pool_size", 0)
            # Kept-alive connections to the AI server are a pool bounded by AI_MAX_IN_FLIGHT, empty before
            # the first AI call (the baseline) and closed when idle past 30 s only at the pool's next use:
            # counted apart (ai_idle), not as descriptors that stayed behind.
            idle_ai = metrics.get("ai_connections_idle", 0)
            mine["ai_idle"] = mine.get("ai_idle", 0) + idle_ai
            mine["fds"] += len(os.listdir(f"/proc/{pid}/fd")) - idle_ai
            mine["rss_kb"] += _rss_kb(pid)
        # The database's side: the platform's server connections (PgBouncer's and the direct ones).
        totals["postgres"] = {"backends": self.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'wabot_app'")}
        return totals

    def settled_resources(self) -> dict[str, dict[str, float]]:
        # Greenlets are counted at most every 10 s by each process; idle pool connections close after
        # a while: read twice, 11 s apart, and keep the lower of each.
        first = self.resources()
        gevent.sleep(11)
        second = self.resources()
        return {role: {k: min(v, second[role][k]) for k, v in first[role].items()} for role in first}

    # -- run -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything the soak started; again is harmless. Whatever printing the logs meets (a
        closed output pipe), the servers are stopped."""
        deploy, self.deploy = self.deploy, None
        self.stop_traffic.set()
        self.tasks.kill(block=True, timeout=10)
        for tenant in self.tenants:
            tenant.receiver.stop()
        self.ai.stop()
        if deploy is not None:
            try:
                if self.args.logs:
                    for name in deploy.procs:
                        print(f"--- {name} (last 3000 characters)\n{deploy.log(name)[-3000:]}")
            finally:
                deploy.close()


def _metrics(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line.split(" ")[0]:
            name, _, value = line.partition(" ")
            try:
                found[name] = float(value)
            except ValueError:
                pass
    return found


def _rss_kb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    return 0.0


def _p50_max(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} {max(values):6.2f}" if values else "     -      -"


def run(args: argparse.Namespace) -> int:
    soak = Soak(args)
    try:
        return _run(soak, args)
    finally:
        soak.close()


def _run(soak: Soak, args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"seed": args.seed, "duration": args.duration, "rate": args.rate,
                               "bots": args.bots, "customers": args.customers}
    try:
        soak.start()
        gevent.sleep(3)  # every process settled
        baseline = soak.settled_resources()
        soak.start_traffic()
        traffic_began = now()
        faults = plan(soak.rng, args.kinds, rounds_after_first=10_000)
        soak.run_faults(faults, until=traffic_began + args.duration)
        soak.stop_traffic.set()
        traffic_seconds = now() - traffic_began
        gevent.joinall(soak.workers, timeout=15)
        soak.check_workers()
        if not all(worker.dead for worker in soak.workers):
            raise RuntimeError("traffic greenlets still running 15 s after the traffic stopped")
        soak.say("traffic stopped; draining")
        drained = soak.drain()
        soak.say(f"drained in {drained:.1f} s; subscribers catching up")
        soak.catch_up()
        soak.read_sim_outbox()
        report = soak.check()
        for what in soak.unrecovered:
            report.add("bots_reconnected", what)
        report.checked["bots_reconnected"] += sum(len(v) for v in soak.recoveries.values()) + len(soak.unrecovered)
        end = soak.settled_resources()
    except KeyboardInterrupt:
        soak.say("interrupted: stopping everything")
        soak.close()
        return 130
    except Exception:  # noqa: BLE001 - the run itself broke: say where, stop everything, exit 2
        traceback.print_exc()
        args.logs = True
        soak.close()
        return 2
    breaches = []
    for role, base in baseline.items():
        for name, value in end[role].items():
            limit = base[name] * (1 + RSS_SLACK) if name == "rss_kb" else base[name] + COUNT_SLACK[name]
            if value > limit:
                breaches.append(f"{role} {name}: {value:g} after, {base[name]:g} before (limit {limit:g})")
    c = soak.counters
    results.update(
        traffic_seconds=round(traffic_seconds, 1), drain_seconds=round(drained, 1),
        inbound=c.inbound, inbound_per_second=round(c.inbound / traffic_seconds, 2),
        answers=sum(1 for r in soak.sim_outbox.values() for m in r.values() if not m.get("from_phone")),
        api_sends=c.api_sends, api_send_failed=c.api_send_failed, reads=c.reads, read_failed=c.read_failed,
        read_failed_in_fault=c.read_failed_in_fault, pages=c.pages, page_failed=c.page_failed,
        page_failed_in_fault=c.page_failed_in_fault,
        stream_events_seen=sum(len(s.seen) for s, _ in soak.subscribers),
        stream_connections=sum(s.connections for s, _ in soak.subscribers),
        webhook_requests=sum(len(t.receiver.requests) for t in soak.tenants),
        ai_calls=len(soak.ai.calls),
        faults={k: len(v) for k, v in soak.recoveries.items()},
        recovery={k: {"p50": round(statistics.median(v), 2), "max": round(max(v), 2)}
                  for k, v in soak.recoveries.items()},
        violations={k: list(v) for k, v in report.summary().items()},
        stream_notices_lost=report.notes["stream_notices_lost"],
        webhook_retries_scheduled=report.notes["webhook_retries_scheduled"],
        resources={"before": baseline, "after": end, "breaches": breaches},
    )
    soak.close()
    print("\nload held")
    for key in ("traffic_seconds", "inbound", "inbound_per_second", "answers", "api_sends", "api_send_failed",
                "reads", "read_failed", "read_failed_in_fault", "pages", "page_failed", "page_failed_in_fault",
                "stream_events_seen", "stream_connections",
                "webhook_requests", "ai_calls", "drain_seconds", "stream_notices_lost",
                "webhook_retries_scheduled"):
        print(f"  {key:24} {results[key]}")
    print("\nfaults by kind           n   recovery p50    max (s)")
    for kind in KINDS:
        if kind in soak.recoveries:
            print(f"  {kind:24} {len(soak.recoveries[kind]):2}   {_p50_max(soak.recoveries[kind])}")
    print("\ninvariant                checked  violations")
    for name, (checked, bad) in report.summary().items():
        print(f"  {name:24} {checked:7}  {bad}")
        for what in report.violations.get(name, [])[:10]:
            print(f"      {what}")
    print("\nresources (per role)     before -> after")
    for role in baseline:
        print(f"  {role:10} " + ", ".join(f"{k} {baseline[role][k]:g} -> {end[role][k]:g}" for k in baseline[role]))
    for what in breaches:
        print(f"  ABOVE BASELINE: {what}")
    for sub, _ in soak.subscribers:
        for what in sub.twice[:5]:
            print(f"  {sub.name} got event {what}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**results, "fault_log": soak.fault_log}, f, indent=2, default=str)
    ok = report.ok and not breaches
    print("\nPASS: no violations, resources back at their baselines" if ok else "\nFAIL")
    return 0 if ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds of traffic and faults (default 180)")
    parser.add_argument("--rate", type=float, default=3, help="inbound messages per second (default 3)")
    parser.add_argument("--bots", type=int, default=4, help="bots, over two tenants (default 4)")
    parser.add_argument("--customers", type=int, default=6, help="customers per bot (default 6)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and traffic (default 1)")
    parser.add_argument("--json", help="write the figures and the fault log to this file")
    parser.add_argument("--dir", help="keep the deployment's files here after the run: the processes' logs, the"
                        " database (default: a temporary directory, removed)")
    parser.add_argument("--kinds", dest="only", help="only these fault kinds, comma-separated (default: every kind)")
    parser.add_argument("--logs", action="store_true", help="print the processes' log tails at the end")
    parser.add_argument("--smoke", action="store_true", help="two bots, about 25 s, three faults")
    args = parser.parse_args(argv)
    args.kinds = KINDS
    if args.only:
        args.kinds = tuple(k.strip() for k in args.only.split(",") if k.strip())
        unknown = sorted(set(args.kinds) - set(KINDS))
        if unknown or not args.kinds:
            parser.error(f"unknown fault kinds {', '.join(unknown)} (known: {', '.join(KINDS)})")
    if args.smoke:
        args.bots, args.customers, args.duration, args.kinds = 2, 3, 10, SMOKE_KINDS
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args(None)))
