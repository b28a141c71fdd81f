"""The verdict on pip-audit's JSON report: exit 1 when a locked package has a known vulnerability with a fixed
version, list the ones without a fix, and say which packages could not be audited at all.

pip-audit asks PyPI for each pinned release (``/pypi/NAME/VERSION/json``). A registry mirror may serve only a
project's page (``/pypi/NAME/json``, as on the project's CI machines), and pip-audit then reports the package as
"not found" — an audit that checked nothing must not read as a clean one. For such a package whose locked
version is the project's latest release, the project page's ``vulnerabilities`` list is about exactly that
release, so it is used instead; the rest are named as not audited (``AUDIT_STRICT=1`` makes that a failure).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

INDEX = os.environ.get("AUDIT_PYPI_JSON", "https://pypi.org/pypi")


def project_page(name: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{INDEX}/{name}/json", timeout=20) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def locked_versions(lock_path: str) -> dict[str, str]:
    """name (normalised as pip-audit reports it) → pinned version."""
    pins = {}
    with open(lock_path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[name.strip().lower().replace("_", "-").replace(".", "-")] = version.strip()
    return pins


def main(report_path: str, lock_path: str) -> int:
    with open(report_path) as f:
        report = json.load(f)
    pins = locked_versions(lock_path)
    fixable: list[str] = []
    unfixed: list[str] = []
    not_audited: list[str] = []
    audited = 0

    def judge(name: str, version: str, vulns: list[dict], fixes_key: str) -> None:
        for vuln in vulns:
            aliases = ", ".join(vuln.get("aliases") or []) or "no alias"
            line = f"{name} {version}: {vuln['id']} ({aliases})"
            fixes = vuln.get(fixes_key) or []
            (fixable if fixes else unfixed).append(f"{line}; fixed in {', '.join(fixes)}" if fixes else line)

    for dep in report.get("dependencies", []):
        name = dep["name"]
        version = dep.get("version") or pins.get(name.lower().replace("_", "-").replace(".", "-"), "?")
        if "skip_reason" not in dep:
            audited += 1
            judge(name, version, dep.get("vulns", []), "fix_versions")
            continue
        page = project_page(name)
        if page is not None and page.get("info", {}).get("version") == version:
            audited += 1
            judge(name, version, page.get("vulnerabilities") or [], "fixed_in")
        else:
            latest = page.get("info", {}).get("version") if page else None
            not_audited.append(f"{name} {version}" + (f" (latest {latest})" if latest else " (no answer)"))

    for line in unfixed:
        print("known, no fix yet:", line)
    for line in fixable:
        print("VULNERABLE:", line)
    if not_audited:
        print(f"not audited ({len(not_audited)}: the vulnerability service had no answer for these releases):",
              ", ".join(not_audited))
    total = audited + len(not_audited)
    if fixable:
        print(f"dependency audit: {len(fixable)} known vulnerabilities with a fix; raise the pins (requirements.lock)")
        return 1
    if not_audited and os.environ.get("AUDIT_STRICT") == "1":
        print("dependency audit incomplete and AUDIT_STRICT=1")
        return 1
    print(f"dependency audit: {audited} of {total} locked packages audited, no known vulnerability with a fix")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
