"""The unit tests under the oldest supported Python (3.9) and the newest on the machine.

The tool promises Python >= 3.9 while the suite itself runs under Debian's Python: a
construct that needs a newer Python (or one removed in the newest) would pass unnoticed.
tests/run.sh makes a small venv with pytest for each interpreter (tests/pythons.py says
which); a missing one fails here, never skips: the promise would go unchecked.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import pythons

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("names, chosen", [
    (["system", "2.7.18", "3.6.15", "3.9.18", "3.11.7", "3.13.0"], ["3.9.18", "3.13.0"]),
    (["3.9.1", "3.9.18", "3.10.2"], ["3.9.18", "3.10.2"]),
    (["3.9.18"], ["3.9.18"]),  # the oldest is the newest
    (["3.8.18", "3.12.1"], ["3.12.1"]),  # no 3.9: the oldest end is missing
    (["system", "pypy3.10-7.3.15"], []),
])
def test_choose_versions(names, chosen):
    assert pythons.choose_versions(names) == chosen


def unit_python(which: str) -> str:
    """The venv python for ``oldest`` or ``newest``; fails the test when it is missing."""
    versions = pythons.choose_versions(pythons.installed_versions())
    if which == "oldest":
        versions = [v for v in versions if tuple(map(int, v.split(".")[:2])) == pythons.OLDEST]
    if not versions:
        pytest.fail(f"no {which} Python under {pythons.PYENV_ROOT}/versions (pyenv install 3.9 / the newest)",
                    pytrace=False)
    python = f"{pythons.VENV_PREFIX}{versions[-1 if which == 'newest' else 0]}/bin/python"
    if not os.access(python, os.X_OK):
        pytest.fail(f"{python} is missing: ./tests/run.sh makes it", pytrace=False)
    return python


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_unit_tests_pass_under(which):
    python = unit_python(which)
    # --noconftest: the unit tests need none of the real-process fixtures (nor their imports)
    done = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                           *pythons.UNIT_TESTS], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary
