"""The unit tests under the oldest supported Python (3.9) and the newest on the machine.

The tool promises Python >= 3.9 while the suite itself runs under Debian's Python: a
construct that needs a newer Python (or one removed in the newest) would pass unnoticed.
jupyter_node.py promises 3.6 (the head node's python3 on RHEL/Rocky 8, CentOS 7): its unit
tests run under the newest 3.6 as well, and it runs from its source on stdin there, as
jupyter-tunnel --submit runs it.  tests/run.sh makes a small venv with pytest for each
interpreter (tests/pythons.py says which); a missing one fails here, never skips: the
promise would go unchecked.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import jupyter_node as jn
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


@pytest.mark.parametrize("names, chosen", [
    (["system", "3.6.8", "3.6.15", "3.9.18", "3.13.0"], "3.6.15"),
    (["3.6.9", "3.6.15", "3.7.16"], "3.6.15"),  # by number, not by name
    (["3.7.16", "3.13.0", "pypy3.6-7.3.3"], None),
])
def test_choose_node_version(names, chosen):
    assert pythons.choose_node_version(names) == chosen


@pytest.mark.parametrize("version, pins", [("3.6.15", ("pip>=21,<22", "pytest<7.1")), ("3.9.18", ("", "pytest")),
                                           ("3.13.0", ("", "pytest"))])
def test_requirements(version, pins):
    assert pythons.requirements(version) == pins


def unit_python(which: str) -> str:
    """The venv python for ``oldest``, ``newest`` or ``node`` (3.6); fails the test when it is missing."""
    names = pythons.installed_versions()
    versions = pythons.choose_versions(names)
    if which == "oldest":
        versions = [v for v in versions if tuple(map(int, v.split(".")[:2])) == pythons.OLDEST]
    if which == "node":
        versions = [v for v in [pythons.choose_node_version(names)] if v]
    if not versions:
        pytest.fail(f"no {which} Python under {pythons.PYENV_ROOT}/versions "
                    "(pyenv install 3.6 / 3.9 / the newest)", pytrace=False)
    python = f"{pythons.VENV_PREFIX}{versions[-1 if which == 'newest' else 0]}/bin/python"
    if not os.access(python, os.X_OK):
        pytest.fail(f"{python} is missing: ./tests/run.sh makes it", pytrace=False)
    return python


@pytest.mark.parametrize("which", ["oldest", "newest", "node"])
@pytest.mark.integration  # the other Pythons' venvs are tests/run.sh's, made as root
def test_unit_tests_pass_under(which):
    python = unit_python(which)
    tests = pythons.NODE_UNIT_TESTS if which == "node" else pythons.UNIT_TESTS
    # --noconftest: the unit tests need none of the real-process fixtures (nor their imports)
    done = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                           *tests], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


@pytest.mark.parametrize("which", ["node", "newest"])
@pytest.mark.integration  # the other Pythons' venvs are tests/run.sh's, made as root
def test_jupyter_node_runs_from_stdin_under(which, tmp_path):
    """``python3 - ARGS`` with the source on stdin: how jupyter-tunnel --submit runs it on the head."""
    python = unit_python(which)
    source = (REPO / "jupyter_node.py").read_text()
    done = subprocess.run([python, "-", "--help"], input=source, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--json" in done.stdout and "--reuse" in done.stdout, done.stderr
    # a PATH with no scheduler: the one JSON object says so, with exit code 3 (missing)
    done = subprocess.run([python, "-", "--json", "--jobs"], input=source, capture_output=True, text=True,
                          timeout=60, env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert done.returncode == jn.EXIT_MISSING, done.stderr
    assert json.loads(done.stdout) == {
        "error": "found neither qrsh nor sbatch/srun on PATH: choose with --scheduler sge|slurm", "state": "failed"}
    assert done.stderr.startswith("Error: found neither qrsh") and "Traceback" not in done.stderr


@pytest.mark.parametrize("which", ["node", "newest"])
@pytest.mark.integration  # the other Pythons' venvs are tests/run.sh's, made as root
def test_submit_program_runs_jupyter_node_under(which, tmp_path):
    """What jupyter-tunnel --submit really sends to the head's python: jupyter_node.py's source
    inside a small program that sets its arguments (none travels through the login shell)."""
    import jupyter_tunnel as jt

    program = jt.build_node_program(["--json", "--jobs"], jt.node_source())
    done = subprocess.run([unit_python(which), "-"], input=program, capture_output=True, text=True, timeout=60,
                          env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert done.returncode == jn.EXIT_MISSING, done.stderr
    info = jt.parse_node_json(done.stdout)
    assert info is not None and info["error"].startswith("found neither qrsh nor sbatch/srun on PATH")
    error = jt.node_tool_failure("python3", "head", done.returncode, done.stderr.splitlines(), info)
    assert error is not None and error.code == jt.EXIT_MISSING
