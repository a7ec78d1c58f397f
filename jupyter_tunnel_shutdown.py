#!/usr/bin/env python3
"""Stop this user's running jupyter-tunnel processes, as Ctrl+C in their terminals would.

The companion of jupyter_tunnel.py, for sleep hooks, cron jobs and tidy desktops.  The flow:

1. find: read the registry, where every running tunnel keeps a ``<pid>.json`` entry from
   the moment it starts (its state, connecting or ready, hosts, local and remote ports;
   never the token).  An entry whose pid is no longer one of our tunnels is stale: what
   that tunnel left (the ssh master and agent outlive a SIGKILLed tunnel, its private
   directory, the entry) is cleaned up now, each only once proven to be that tunnel's own
   (jupyter_tunnel.clean_leftovers); ``--list`` only reads.  Then this user's processes
   are scanned for tunnels without an entry (started by a version without the registry).
2. choose: ``--port`` and ``--host`` keep only the matching tunnels.
3. ``--list`` prints them (a table, or JSON) and stops there.  Otherwise:
4. interrupt: SIGINT to each, as Ctrl+C would, so that the tunnel's own cleanup runs (it
   stops its master, kills its agent, removes its directory and its entry).
5. wait until each is really gone (``--timeout``); with ``--force``, SIGKILL those that are
   not and clean up after them as in step 1.

Only processes of the user running this script are signalled, and only after their command
line was checked right before: a pid reused by an unrelated process is left alone.  Nothing
is ever asked, so it runs without a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

# the registry, process identity and messages are the tunnel's own: one API, used as jt.*
import jupyter_node
import jupyter_tunnel as jt

__all__ = ["RunningTunnel", "find_tunnels", "select_tunnels", "stop_tunnels", "main"]

# Exit codes (documented in --help and README.md).
EXIT_OK = 0  # every chosen tunnel stopped, or none was running
EXIT_NOT_STOPPED = 1  # some tunnel still runs (without --force), or an error
EXIT_USAGE = 2  # bad option (argparse)
EXIT_INTERRUPTED = 130

DEFAULT_TIMEOUT = 10.0  # seconds a tunnel gets to close (its cleanup takes well under one)
KILL_TIMEOUT = 5.0  # after SIGKILL: instant, unless the process is stuck in the kernel
POLL_INTERVAL = 0.05
# SERVER: "started" when the run started its Jupyter server (--start, --submit), "found" when it
# attached; JOB and TIME LEFT: the scheduler job the server runs in (--submit, -n auto, --job)
TABLE_COLUMNS = ("PID", "LOCAL PORT", "HOSTS", "NODE", "REMOTE", "SERVER", "JOB", "TIME LEFT", "STATE",
                 "STARTED")


@dataclass(frozen=True)
class RunningTunnel:
    """A tunnel of this user: from its registry entry, or found by the process scan."""

    pid: int
    hosts: tuple[str, ...] = ()
    node: str = ""
    local_port: int | None = None
    remote_host: str = ""
    remote_port: int | None = None
    sock: str = ""
    root_dir: str = ""
    started: float | None = None
    phase: str = ""  # the entry's "state": connecting or ready ("" when unregistered)
    started_server: bool | None = None  # whether the run started its server (None: unknown)
    command: str = ""  # only for an unregistered tunnel: its command line
    job: str = ""  # the scheduler job the server runs in ("" when none)
    scheduler: str = ""
    job_end: float | None = None  # epoch seconds at the job's time limit (None: no limit, or unknown)
    state: dict | None = field(default=None, compare=False, repr=False)  # the registry entry

    @classmethod
    def from_state(cls, state: Mapping) -> RunningTunnel:
        """From a registry entry (written by jupyter_tunnel.build_state); odd fields are dropped."""
        hosts, job, scheduler = state.get("hosts"), state.get("job"), state.get("scheduler")
        return cls(
            pid=int(state["pid"]),
            hosts=tuple(str(h) for h in hosts) if isinstance(hosts, list) else (),
            node=str(state.get("node") or ""),
            local_port=_int_or_none(state.get("local_port")),
            remote_host=str(state.get("remote_host") or ""),
            remote_port=_int_or_none(state.get("remote_port")) or None,  # 0: a unix socket
            sock=str(state.get("sock") or ""),
            root_dir=str(state.get("root_dir") or ""),
            started=_finite_or_none(state.get("started")),
            phase=str(state.get("state") or "?"),
            # not known before the run has chosen its server
            started_server=(True if state.get("started_server") is True
                            else False if state.get("server_pid") else None),
            # shown, and put in a qdel/scancel command by the reader: only a job id passes
            job=job if isinstance(job, str) and jt.JOB_ID_RE.fullmatch(job) else "",
            scheduler=scheduler if isinstance(scheduler, str) and scheduler in jt.CANCEL_COMMANDS else "",
            job_end=_finite_or_none(state.get("job_end")),
            state=dict(state),
        )

    @classmethod
    def from_argv(cls, pid: int, argv: Sequence[str]) -> RunningTunnel:
        """From the command line of a tunnel that did not register: only its hosts are known."""
        hosts, node = hosts_from_argv(argv)
        return cls(pid=pid, hosts=hosts, node=node, remote_host=node or (hosts[-1] if hosts else ""),
                   command=" ".join(argv))

    def alive(self) -> bool:
        """Whether it still runs: a jupyter-tunnel of ours by its argv, or (registered) a run
        hosted by another program that holds its directory's lock (jupyter_tunnel.is_live_run)."""
        return jt.is_live_run(self.state) if self.state is not None else jt.is_own_tunnel(self.pid)

    @property
    def registered(self) -> bool:
        """Whether it has a registry entry (else it was found by the process scan)."""
        return self.state is not None

    def describe(self) -> str:
        """``localhost:8889 -> srv:8888 via gw``, for messages."""
        # as in jupyter_tunnel.Route: all -s hosts but the last are jumps, and with a node
        # the last one (the head) is a jump too
        hops = self.hosts if self.node else self.hosts[:-1]
        via = f" via {', '.join(hops)}" if hops else ""
        if not self.registered:
            # its local and remote ports are nowhere to be read
            return f"unregistered tunnel to {self.remote_host}{via}" if self.remote_host else \
                "unregistered tunnel"
        if self.phase == jt.CONNECTING and self.local_port is None:
            return f"tunnel to {self.remote_host or '?'}{via}, connecting"
        remote = self.sock or (str(self.remote_port) if self.remote_port else "?")
        return f"localhost:{self.local_port or '?'} -> {self.remote_host or '?'}:{remote}{via}"

    def to_json(self) -> dict:
        """The ``--json`` form: the same keys for every tunnel, null when unknown."""
        return {
            "pid": self.pid, "registered": self.registered, "state": self.phase or None,
            "local_port": self.local_port,
            "hosts": list(self.hosts), "node": self.node, "remote_host": self.remote_host,
            "remote_port": self.remote_port, "sock": self.sock, "root_dir": self.root_dir,
            "started": self.started, "started_server": self.started_server, "command": self.command,
            "job": self.job or None, "scheduler": self.scheduler or None,
            "time_left": time_left(self.job_end, time.time()) if self.job else None,
        }


# --------------------------------------------------------------------------- pure parts


def _int_or_none(value: object) -> int | None:
    """``int(value)``, or None for a missing or malformed field (a JSON 1e400 is an infinite
    float: int() raises OverflowError for it)."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _float_or_none(value: object) -> float | None:
    """``float(value)``, or None for a missing or malformed field (an integer of 400 digits
    overflows a float)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _finite_or_none(value: object) -> float | None:
    """``float(value)`` if it is a finite number (a time to compute with), else None."""
    number = _float_or_none(value)
    return number if number is not None and abs(number) < float("inf") else None  # False for nan too


def hosts_from_argv(argv: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The ``-s`` hosts and the ``-n`` node of a jupyter-tunnel command line, as far as it tells."""
    i = jt.script_index(argv)
    args = list(argv[(i or 0) + 1:])
    if args[:1] == [jt.TUNNEL_MODULE]:  # python -m jupyter_tunnel
        args = args[1:]
    hosts: list[str] = []
    node = ""
    j = 0
    while j < len(args):
        arg = args[j]
        j += 1
        if arg in ("-s", "--host"):
            while j < len(args) and not args[j].startswith("-"):  # nargs="+"
                hosts.extend(jt.split_host_list(args[j]))
                j += 1
        elif arg.startswith("--host="):
            hosts.extend(jt.split_host_list(arg[len("--host="):]))
        elif arg.startswith("-s") and not arg.startswith("--"):
            hosts.extend(jt.split_host_list(arg[2:]))  # -sgw
        elif arg in ("-n", "--node") and j < len(args):
            node, j = args[j], j + 1
        elif arg.startswith("--node="):
            node = arg[len("--node="):]
    return tuple(hosts), node


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``--host pattern`` names ``host``; a user or port the pattern leaves out matches any."""
    if not pattern or not host:
        return False
    want_user, want_name, want_port = jt.split_host(pattern)
    user, name, port = jt.split_host(host)
    return (want_name == name and want_user in ("", user) and want_port in ("", port))


def select_tunnels(tunnels: Iterable[RunningTunnel], ports: Sequence[int],
                   hosts: Sequence[str]) -> list[RunningTunnel]:
    """The tunnels on one of ``ports`` and through one of ``hosts`` (all when neither is given).

    ``--host`` matches any host of the route: jump hosts, the target, the node.  An
    unregistered tunnel's local port is unknown, so ``--port`` never selects it.
    """
    chosen = []
    for tunnel in tunnels:
        if ports and tunnel.local_port not in ports:
            continue
        route = [*tunnel.hosts, tunnel.node]
        if hosts and not any(host_matches(p, h) for p in hosts for h in route):
            continue
        chosen.append(tunnel)
    return chosen


def in_registry_scope(ours: str, environ: Mapping[str, str] | None) -> bool:
    """Whether a tunnel found by the scan is one this run looks after.

    ``JUPYTER_TUNNEL_REGISTRY`` names a separate set of tunnels (the tests run sets side by
    side, as root, on a shared machine): with it set, only tunnels started with the same
    value are ours, and one whose environment cannot be read is not.  Without it, all are.
    """
    if not ours:
        return True
    return environ is not None and environ.get(jt.REGISTRY_ENV) == ours


def time_left(job_end: float | None, now: float) -> int | None:
    """Whole seconds from ``now`` to a job's end (0 once past it); None when it has no end."""
    return None if job_end is None else max(0, int(job_end - now))


def format_time_left(job: str, job_end: float | None, now: float) -> str:
    """The TIME LEFT cell: ``1:29:59`` or ``2-03:00:00`` as squeue says it, one word; ``-``
    without a job, ``?`` for a job without a known end."""
    left = time_left(job_end, now)
    if not job or left is None:
        return "-" if not job else "?"
    return jupyter_node.format_clock(left)  # as jupyter-node --jobs shows it


def format_started(started: float | None) -> str:
    """Local time of a tunnel's start for the table, ``?`` when unknown."""
    try:
        return "?" if started is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    except (OverflowError, OSError, ValueError):  # a registry's 1e20: no such local time
        return "?"


def table_row(tunnel: RunningTunnel) -> tuple[str, ...]:
    """One ``--list`` row, in TABLE_COLUMNS order; no cell holds a space, but STARTED (last)."""
    if tunnel.registered:
        remote = tunnel.sock or (str(tunnel.remote_port) if tunnel.remote_port else "?")
    else:
        remote = "?"
    return (
        str(tunnel.pid),
        str(tunnel.local_port) if tunnel.local_port else "?",
        ",".join(tunnel.hosts) or "?",  # the form -s accepts, and one word for awk
        tunnel.node or "-",
        remote,
        {True: "started", False: "found", None: "?"}[tunnel.started_server],
        tunnel.job or "-",
        format_time_left(tunnel.job, tunnel.job_end, time.time()),
        tunnel.phase or "?",
        format_started(tunnel.started),
    )


def parse_environ(raw: bytes) -> dict[str, str]:
    """The environment from the bytes of ``/proc/PID/environ``."""
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[name] = value
    return env


# --------------------------------------------------------------------------- I/O parts


def process_environ(pid: int) -> dict[str, str] | None:
    """The environment of process ``pid``, or None when it cannot be read (no /proc)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return parse_environ(f.read())
    except OSError:
        return None


def scan_processes(uid: int) -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of every process of user ``uid``."""
    if not jt.HAVE_PROC:
        done = subprocess.run(["ps", "-U", str(uid), "-o", "pid=,uid=,command="],
                              capture_output=True, text=True)
        return [(pid, argv) for pid, owner, argv in jt.parse_ps(done.stdout) if owner == uid]
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = jt.process_info(int(name))
            if info is not None and info[0] == uid:
                found.append((int(name), info[1]))
    return found


def find_tunnels(clean: bool = True) -> list[RunningTunnel]:
    """This user's running tunnels, registered ones first; with ``clean``, stale entries are
    cleaned up on the way (else they are left as they are: ``--list`` only reads)."""
    def cleaned(state: dict) -> None:
        try:
            what = RunningTunnel.from_state(state).describe()
        except (TypeError, ValueError, OverflowError):
            what = "its registry entry is damaged"
        jt.say("Info", f"Cleaned up after process {state['pid']}, which had died ({what})")

    found: list[RunningTunnel] = []
    for state in jt.scan_registry(clean, cleaned):
        try:
            found.append(RunningTunnel.from_state(state))
        except (TypeError, ValueError, OverflowError):
            continue  # read_states checked pid; keep going whatever else is odd
    ours = os.environ.get(jt.REGISTRY_ENV, "")
    known = {t.pid for t in found}
    for pid, argv in scan_processes(os.getuid()):
        if pid not in known and pid != os.getpid() and jt.is_tunnel_argv(argv) \
                and in_registry_scope(ours, process_environ(pid)):
            found.append(RunningTunnel.from_argv(pid, argv))
    return found


def wait_until_gone(tunnels: Sequence[RunningTunnel], timeout: float,
                    on_gone: Callable[[RunningTunnel], None]) -> list[RunningTunnel]:
    """Poll until every tunnel has exited or ``timeout`` passed; returns those still running."""
    deadline = time.monotonic() + timeout
    remaining = list(tunnels)
    while True:
        for tunnel in list(remaining):
            if not tunnel.alive():  # exited (a zombie counts: its cleanup is done)
                remaining.remove(tunnel)
                on_gone(tunnel)
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(POLL_INTERVAL)


def send(tunnel: RunningTunnel, signum: int) -> bool:
    """Signal ``tunnel`` if its pid is still one of our tunnels; whether it was signalled.

    A run hosted by another program (``jupyter_tunnel.main([...])``) is signalled too, as the
    script is: its lock proves, right before the signal (a pidfd pins the pid meanwhile), that
    the pid is a live run, and a run holds its lock only inside run_tunnel, where SIGINT
    raises KeyboardInterrupt into it (its Ctrl+C: it cleans up, main() returns 0) and SIGTERM
    and SIGHUP end it the same way; the host's own handlers come back only once the lock is
    released, with the run's signals ignored in between.  So the signal ends the run, not
    the program around it (that one then goes on after main() as after a Ctrl+C).
    """
    return jt.signal_if(tunnel.pid, tunnel.alive, signum)


def clean_after(tunnel: RunningTunnel) -> None:
    """Remove a gone tunnel's leftovers, if its own cleanup could not (entry still there).

    The entry is read again: since it was listed, the tunnel may have started its master
    (or a new one, reconnecting).
    """
    state = jt.read_state(tunnel.state["file"]) if tunnel.state and "file" in tunnel.state else None
    if state is not None:
        jt.warn_left_alone(state, jt.clean_leftovers(state))


def stop_tunnels(tunnels: Sequence[RunningTunnel], timeout: float, force: bool) -> int:
    """Interrupt the tunnels, wait for them, SIGKILL the rest with ``force``; the exit code."""
    signalled = []
    for tunnel in tunnels:
        if send(tunnel, signal.SIGINT):  # what Ctrl+C sends: the tunnel cleans up itself
            signalled.append(tunnel)
        else:
            jt.say("Info", f"Process {tunnel.pid} has already exited ({tunnel.describe()})")

    def gone(tunnel: RunningTunnel) -> None:
        clean_after(tunnel)
        jt.say("Info", f"Killed process {tunnel.pid} ({tunnel.describe()})")

    remaining = wait_until_gone(signalled, timeout, gone)
    if not remaining:
        return EXIT_OK
    if not force:
        for tunnel in remaining:
            jt.say("Warning", f"process {tunnel.pid} ({tunnel.describe()}) did not stop within "
                           f"{timeout:g} s; --force kills it")
        return EXIT_NOT_STOPPED

    def killed(tunnel: RunningTunnel) -> None:
        clean_after(tunnel)
        jt.say("Info", f"Killed process {tunnel.pid} with SIGKILL ({tunnel.describe()})")

    for tunnel in remaining:
        jt.say("Warning", f"process {tunnel.pid} did not stop within {timeout:g} s: sending SIGKILL")
        send(tunnel, signal.SIGKILL)
    survivors = wait_until_gone(remaining, KILL_TIMEOUT, killed)
    for tunnel in survivors:
        jt.say("Error", f"process {tunnel.pid} ({tunnel.describe()}) survived SIGKILL")
    return EXIT_NOT_STOPPED if survivors else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The command line: no argument stops every tunnel, as the original script did."""
    parser = argparse.ArgumentParser(
        prog="jupyter-tunnel-shutdown",
        description=(
            "Stop your running jupyter-tunnel processes as Ctrl+C would (each closes its SSH\n"
            "connection and cleans up), and wait until they are gone. Without options: all of\n"
            "them. Never asks anything, so it fits sleep hooks and cron jobs."
        ),
        epilog=(
            "examples:\n"
            "  stop every tunnel:           jupyter-tunnel-shutdown\n"
            "  see what runs:               jupyter-tunnel-shutdown --list\n"
            "  stop the one on port 8888:   jupyter-tunnel-shutdown --port 8888\n"
            "  stop those through a host:   jupyter-tunnel-shutdown --host gateway.ext\n"
            "  from a sleep hook:           jupyter-tunnel-shutdown --timeout 5 --force\n"
            "\nexit codes: 0 all stopped (or none was running), 1 some did not stop\n"
            "  (without --force) or an error, 2 bad option, 130 interrupted"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-l", "--list", action="store_true",
                        help="list the running tunnels (a table on stdout) instead of stopping them")
    parser.add_argument("--json", action="store_true", help="list them as a JSON array (implies --list)")
    parser.add_argument("--port", type=jt.int_option(1, 65535), action="append", default=[], metavar="LPORT",
                        help="only the tunnel on this local port; repeatable")
    parser.add_argument("--host", action="append", default=[], metavar="HOST",
                        help="only tunnels through HOST (any -s host or the -n node; user@ and "
                             ":port may be left out); repeatable")
    parser.add_argument("--timeout", type=jt.number_option("seconds", jt.MAX_TIMEOUT), default=DEFAULT_TIMEOUT,
                        metavar="SECONDS",
                        help="how long each tunnel gets to close [default: %(default)g]")
    parser.add_argument("-f", "--force", action="store_true",
                        help="SIGKILL the tunnels still running after --timeout, and remove "
                             "what they leave (ssh master, agent, private directory)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {jt.__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.list = args.list or args.json
    if args.list and args.force:
        parser.error("--force stops tunnels: it cannot go with --list/--json")
    try:
        tunnels = find_tunnels(clean=not args.list)
        chosen = select_tunnels(tunnels, args.port, args.host)
        if args.port:
            for tunnel in tunnels:
                if not tunnel.registered and tunnel not in chosen:
                    jt.say("Warning", f"process {tunnel.pid} is a tunnel that did not register (an older "
                                   "version): its local port is unknown, so --port leaves it alone")
        if args.json:
            print(json.dumps([t.to_json() for t in chosen], indent=2))
            return EXIT_OK
        if not chosen:
            others = f" ({len(tunnels)} running, none matches --port/--host)" if tunnels else ""
            jt.say("Info", f"No tunnel {'is running' if args.list else 'to kill'}{others}.")
            return EXIT_OK
        if args.list:
            print(jt.format_table([TABLE_COLUMNS, *map(table_row, chosen)]), flush=True)
            return EXIT_OK
        return stop_tunnels(chosen, args.timeout, args.force)
    except OSError as error:  # a registry file or /proc entry that cannot be read or removed
        jt.say("Error", jt.explain_error(error)[0])
        return EXIT_NOT_STOPPED
    except KeyboardInterrupt:
        jt.say("Info", "Interrupted.")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
