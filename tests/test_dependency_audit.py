"""The verdict of the dependency audit (.ci/audit_verdict.py) over pip-audit reports, with a local stand-in
for PyPI's project pages; the audit itself runs in .ci/run."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
VERDICT = ROOT / ".ci" / "audit_verdict.py"

PAGES = {
    "latest-vulnerable": {"info": {"version": "2.0"}, "vulnerabilities": [
        {"id": "PYSEC-1", "aliases": ["CVE-1"], "fixed_in": ["2.1"]}]},
    "latest-clean": {"info": {"version": "1.0"}, "vulnerabilities": []},
    "older": {"info": {"version": "9.0"}, "vulnerabilities": []},
}


@pytest.fixture(scope="module")
def pypi():
    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.strip("/").split("/")[0]
            page = PAGES.get(name)
            body = json.dumps(page).encode() if page else b"{}"
            self.send_response(200 if page else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def verdict(tmp_path, pypi, dependencies, lock, **env):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"dependencies": dependencies, "fixes": []}))
    lock_file = tmp_path / "requirements.lock"
    lock_file.write_text("# pins\n" + "".join(f"{n}=={v}\n" for n, v in lock.items()))
    return subprocess.run([sys.executable, str(VERDICT), str(report), str(lock_file)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "AUDIT_PYPI_JSON": pypi, **env})


def not_found(name):
    return {"name": name, "skip_reason": f"Dependency not found on PyPI and could not be audited: {name}"}


def test_a_vulnerability_with_a_fixed_version_fails_the_audit(tmp_path, pypi):
    result = verdict(tmp_path, pypi, [{"name": "flask", "version": "1.0", "vulns": [
        {"id": "GHSA-x", "aliases": [], "fix_versions": ["1.1"]}]}], {"flask": "1.0"})
    assert result.returncode == 1
    assert "VULNERABLE: flask 1.0: GHSA-x" in result.stdout and "fixed in 1.1" in result.stdout


def test_a_vulnerability_without_a_fix_is_listed_and_does_not_fail(tmp_path, pypi):
    result = verdict(tmp_path, pypi, [{"name": "flask", "version": "1.0", "vulns": [
        {"id": "GHSA-y", "aliases": [], "fix_versions": []}]}], {"flask": "1.0"})
    assert result.returncode == 0, result.stdout
    assert "known, no fix yet: flask 1.0: GHSA-y" in result.stdout


def test_a_latest_release_pip_audit_could_not_find_is_judged_by_its_project_page(tmp_path, pypi):
    result = verdict(tmp_path, pypi, [not_found("latest-vulnerable"), not_found("latest-clean")],
                     {"latest-vulnerable": "2.0", "latest-clean": "1.0"})
    assert result.returncode == 1
    assert "VULNERABLE: latest-vulnerable 2.0: PYSEC-1" in result.stdout


def test_a_release_nothing_could_audit_is_named_and_fails_only_when_strict(tmp_path, pypi):
    deps, lock = [not_found("older"), not_found("latest-clean")], {"older": "1.0", "latest-clean": "1.0"}
    result = verdict(tmp_path, pypi, deps, lock)
    assert result.returncode == 0
    assert "not audited (1" in result.stdout and "older 1.0 (latest 9.0)" in result.stdout
    assert "1 of 2 locked packages audited" in result.stdout
    assert verdict(tmp_path, pypi, deps, lock, AUDIT_STRICT="1").returncode == 1


def test_the_lock_pins_every_declared_dependency_within_its_range():
    import configparser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in ("dev", "bench"):
        lines += cfg["options.extras_require"][extra].splitlines()
    declared = [Requirement(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()]
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    missing = [str(r) for r in declared if canonicalize_name(r.name) not in pins]
    outside = [f"{r} (locked {pins[canonicalize_name(r.name)]})" for r in declared
               if canonicalize_name(r.name) in pins and not r.specifier.contains(pins[canonicalize_name(r.name)])]
    assert not missing and not outside, f"regenerate requirements.lock: missing {missing}, outside {outside}"
