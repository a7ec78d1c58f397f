#!/usr/bin/env python3
"""Try jupyter-tunnel without a remote machine: the tests' own environment, by hand.

Run through ``./tests/demo.sh`` (as root on a Debian-like machine, as the tests): it
installs what is missing, then this stands up the loopback sshd (hosts ``gw``, ``head`` and
``srv`` on 127.0.0.1-3) and a real JupyterLab run by the test user ``jtmulti``, and runs
``jupyter_tunnel.py -s gw jtmulti@srv`` through them in this terminal: the URL it prints opens the
lab.  Ctrl+C closes the tunnel, then everything is taken down.  Options after ``--`` go
to jupyter_tunnel.py (``-- -b firefox``, ``-- -v``).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import realenv

SCRIPT = Path(__file__).resolve().parent.parent / "jupyter_tunnel.py"
USER = realenv.MULTI_USER


def note(text: str) -> None:
    """Progress of the set-up on stderr (stdout is the tool's: the URL)."""
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def main(argv: "list[str] | None" = None) -> int:
    """Stand the environment up, run the tunnel until Ctrl+C, take it all down."""
    parser = argparse.ArgumentParser(prog="tests/demo.sh", description=__doc__.split("\n\n")[0])
    # the config's hosts log in as jtuser, whose one server belongs to the test session
    parser.add_argument("--hosts", nargs="+", default=["gw", f"{USER}@srv"],
                        help=f"the -s hosts, of gw, head, srv [default: gw {USER}@srv]")
    parser.add_argument("--no-lock", action="store_true",
                        help="for tests/test_demo.py: the test session holds the lock and set the users up")
    parser.add_argument("tool_args", nargs="*", help="more jupyter_tunnel.py options, after --")
    args = parser.parse_args(argv)
    note("starting sshd on 127.0.0.1-3 and JupyterLab as user jtmulti (a few seconds)...")
    try:
        with realenv.environment(USER, app="lab", no_lock=args.no_lock, on_wait=note) as (sshd, server, _):
            command = [sys.executable, str(SCRIPT), "-F", str(sshd.config), "-s", *args.hosts,
                       "-b", "none", *args.tool_args]
            note(f"JupyterLab (pid {server.pid}) serves {server.root_dir} on srv's 127.0.0.1:{server.port}")
            note(f"running: jupyter-tunnel -F {sshd.config} -s {' '.join(args.hosts)} -b none "
                 f"{' '.join(args.tool_args)}".rstrip())
            tool = subprocess.Popen(command)
            try:
                return tool.wait()
            except KeyboardInterrupt:
                # the terminal sent Ctrl+C to the tool too: let it close its tunnel first
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                return tool.wait()
            finally:
                note("taking down Jupyter and sshd...")
    except realenv.SetupError as error:
        note(f"ERROR: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
