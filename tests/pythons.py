#!/usr/bin/env python3
"""Which other Pythons the unit tests run under, and where their venvs live.

Shared by tests/run.sh (``pythons.py --versions`` lists the pyenv versions to make venvs
for) and tests/test_pythons.py (which runs the unit tests under each).  jupyter_tunnel.py
and jupyter_tunnel_shutdown.py promise Python >= 3.9: the oldest 3.9 and the newest
Python that pyenv has on the machine are the two ends of that promise.  jupyter_node.py
runs on the head node, whose python3 is 3.6 on RHEL/Rocky 8 and CentOS 7: its unit tests
run under the newest 3.6 too.
"""

import os
import re
import sys

OLDEST = (3, 9)
NODE_OLDEST = (3, 6)  # jupyter_node.py's promise
# Python 3.6's venv comes with pip 18, which fails on a release that needs a newer Python
# instead of taking an older one: pip 21.3 (the last for 3.6) does.  pytest 7.0.x is the
# last that runs on 3.6.  (pip requirement, pytest requirement) by (major, minor):
OLD_PYTHON_PINS = {(3, 6): ("pip>=21,<22", "pytest<7.1")}
PYENV_ROOT = os.environ.get("JT_PYENV_ROOT") or os.environ.get("PYENV_ROOT") \
    or os.path.expanduser("~/.pyenv")
VENV_PREFIX = "/opt/jupyter-tunnel-unit-"
# the unit tests: pure parts only, no sshd, no Jupyter, no root.  Every tests/test_*units.py
# by its name (a hand-kept list forgot one), and the README's tables.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
UNIT_TESTS = tuple(sorted(f"tests/{name}" for name in os.listdir(TESTS_DIR)
                          if name.startswith("test_") and name.endswith("units.py"))) + ("tests/test_readme.py",)
NODE_UNIT_TESTS = ("tests/test_node_units.py",)


def parse_version(name):
    """``(3, 9, 18)`` from a pyenv version directory's name; None for others (``system``, ``pypy``)."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", name)
    return tuple(int(part) for part in match.groups()) if match else None


def choose_versions(names):
    """The newest release of the oldest supported minor version, and the newest overall."""
    versions = sorted(v for v in map(parse_version, names) if v and v[:2] >= OLDEST)
    oldest = [v for v in versions if v[:2] == OLDEST]
    chosen = {oldest[-1]} if oldest else set()
    if versions:
        chosen.add(versions[-1])
    return [".".join(map(str, v)) for v in sorted(chosen)]


def choose_node_version(names):
    """The newest release of jupyter_node.py's oldest Python (3.6), or None."""
    versions = sorted(v for v in map(parse_version, names) if v and v[:2] == NODE_OLDEST)
    return ".".join(map(str, versions[-1])) if versions else None


def requirements(version):
    """(pip, pytest) to pip-install under Python ``version`` ("3.6.15"); pip "": the venv's own."""
    return OLD_PYTHON_PINS.get(tuple(int(part) for part in version.split(".")[:2]), ("", "pytest"))


def installed_versions(root=PYENV_ROOT):
    """The version names pyenv has installed under ``root`` (none when there is no pyenv)."""
    try:
        return sorted(os.listdir(os.path.join(root, "versions")))
    except OSError:
        return []


if __name__ == "__main__":
    if sys.argv[1:2] in (["--pip"], ["--pytest"]) and len(sys.argv) == 3:
        print(requirements(sys.argv[2])[sys.argv[1] == "--pytest"])
        sys.exit(0)
    if sys.argv[1:] != ["--versions"]:
        sys.exit("usage: pythons.py --versions | --pip VERSION | --pytest VERSION")
    names = installed_versions()
    node = choose_node_version(names)
    print("\n".join(([node] if node else []) + choose_versions(names)))
