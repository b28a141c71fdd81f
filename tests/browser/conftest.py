"""The dashboard in a real browser: the distribution's Chromium driven by Playwright, against the
platform (``python run.py``) and the WhatsApp simulator running as subprocesses.

This directory is not collected by the main test run (whose process gevent patches: Playwright's
sync API cannot run there); ``tests/test_browser.py`` runs it as a pytest process of its own with
``--confcutdir`` set here, so nothing of ``tests/conftest.py`` is loaded.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
import requests

from tests import waiting

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = str(ROOT / "run.py")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling out and the closed network refuses it.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LISTENING = re.compile(r"listening on (http://\S+:\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=20.0, what="the condition", interval=0.05):
    """``tests.waiting.wait_until`` at a browser's pace: a real page and two processes take longer."""
    return waiting.wait_until(predicate, timeout, what, interval)


class Platform:
    """``python run.py`` (web and supervision) and ``python run.py simulator``, on free ports, in a
    DATA_DIR of their own; stopped with SIGTERM at the end."""

    def __init__(self, **env: str) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="wabot-browser-")
        os.chmod(self.data_dir, 0o755)  # the embedded PostgreSQL runs as another user
        sim_port = free_port()
        while (control := sim_port + 1) and not _free(control):
            sim_port = free_port()
        self.control = f"http://127.0.0.1:{control}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("WA_", "DATABASE_", "AI_", "PORT", "HOST"))}
        base.update(DATA_DIR=self.data_dir, PYTHONUNBUFFERED="1", LOG_LEVEL="warning",
                    WA_SIMULATOR_ADDR=f"127.0.0.1:{sim_port}")
        self.env = {**base, "WA_TRANSPORT": "simulator", "PORT": "0", "BOT_SEND_RATE": "0", **env}
        self.logs: dict[str, list[str]] = {}
        self.simulator = self._start("simulator", "simulator")
        wait_until(lambda: _answers(self.control + "/healthz"), what="the simulator")
        self.app = self._start("platform")
        self.url = wait_until(self._listening, timeout=60, what="the platform listening")

    def _start(self, name, *args):
        log = open(os.path.join(self.data_dir, f"{name}.log"), "w+")  # noqa: SIM115 - the process's, closed with it
        process = subprocess.Popen([sys.executable, RUN, *args], env=self.env, cwd=self.data_dir, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        process.log = log
        return process

    def _listening(self):
        if self.app.poll() is not None:  # not an AssertionError: that would mean "not yet" to wait_until
            raise RuntimeError("the platform exited: " + self.log("platform")[-2000:])
        match = LISTENING.search(self.log("platform"))
        return match.group(1) if match else None

    def log(self, name):
        with open(os.path.join(self.data_dir, f"{name}.log")) as fh:
            return fh.read()

    def cli(self, *args) -> str:
        # The platform picked a free port: the links the CLI prints must name it.
        done = subprocess.run([sys.executable, RUN, *args], env={**self.env, "PUBLIC_URL": self.url}, cwd=self.data_dir,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def sim(self, method, path, **json):
        response = requests.request(method, self.control + path, json=json or None, timeout=10)
        assert response.status_code < 400, response.text
        return response.json()

    def stop(self):
        for process in (self.app, self.simulator):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.app, self.simulator):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(url):
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def set_password(page, link: str, password: str) -> None:
    """Open a set-password (or invitation) link, choose ``password`` and land in the inbox, signed in."""
    from playwright.sync_api import expect

    page.goto(link)
    page.fill("#password", password)
    page.fill("#password_again", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/app/inbox$"))


@pytest.fixture(scope="module")
def platform():
    running = Platform()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)"
    scratch = tempfile.mkdtemp(prefix="wabot-chromium-")  # Chromium leaves files in TMPDIR: keep them here
    with sync_playwright() as p:
        # Playwright gives every launch a new, empty profile of its own.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                     env={**os.environ, "TMPDIR": scratch})
        try:
            yield launched
        finally:
            launched.close()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def shots():
    """Where screenshots go: SCREENSHOTS_DIR (docs/screenshots to refresh the README's), else a temp dir."""
    target = os.environ.get("SCREENSHOTS_DIR")
    directory = pathlib.Path(target) if target else pathlib.Path(tempfile.mkdtemp(prefix="wabot-shots-"))
    directory.mkdir(parents=True, exist_ok=True)
    yield directory
    if not target:
        shutil.rmtree(directory, ignore_errors=True)
