#!/bin/sh
# tests/demo.sh - try jupyter-tunnel in one command, without a remote machine.
#
# As root on a Debian-like machine (like the tests): installs what is missing (the test
# command's own set-up), stands up a loopback sshd and a real JupyterLab, runs
# `jupyter-tunnel -s gw jtmulti@srv` through two hops and leaves the tunnel open until Ctrl+C,
# then takes everything down.  Options after -- go to jupyter-tunnel: ./tests/demo.sh -- -v
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
JT_SETUP_ONLY=1 "$repo/tests/run.sh"
exec "${JT_TEST_VENV:-/opt/jupyter-tunnel-test}/bin/python" "$repo/tests/demo.py" "$@"
