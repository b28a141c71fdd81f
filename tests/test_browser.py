"""The dashboard in a real browser (``tests/browser``), run as a pytest process of its own.

This process is patched by gevent (tests/conftest.py) and Playwright's sync API cannot run in it, so
the browser tests run in a fresh interpreter that loads nothing of this directory's conftest
(``--confcutdir``). They never skip: a missing Chromium is a failure that says how to install it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_whole_working_day_in_chromium_passes():
    browser_tests = ROOT / "tests" / "browser"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(browser_tests), f"--confcutdir={browser_tests}", "-q", "-x",
         "-p", "no:cacheprovider", "-o", "addopts=", "--timeout=240"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, "browser tests failed:\n" + done.stdout[-12000:] + done.stderr[-4000:]
