"""The static checks as part of the suite: ruff (ruff.toml) and mypy (setup.cfg's [mypy]) find nothing.

Both run as subprocesses from the repository's root, with the configuration a developer's ``ruff check``
and ``mypy`` read, and with their caches (.ruff_cache, .mypy_cache: a warm run takes a second or two).
A failure shows the findings as the tools print them. Why these rules and this scope:
docs/decisions.md, "Static checks".
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, check=False)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "--no-fix", "--output-format", "concise", ".")
    if result.returncode != 0:
        pytest.fail(f"ruff check . found problems (ruff check --fix . repairs those marked [*]):\n"
                    f"{result.stdout}{result.stderr}", pytrace=False)


def test_mypy_finds_nothing():
    result = _run("mypy")  # its files and settings: setup.cfg
    if result.returncode != 0:
        pytest.fail(f"mypy found problems:\n{result.stdout}{result.stderr}", pytrace=False)
