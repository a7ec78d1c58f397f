#!/usr/bin/env python3
"""Benchmark: ``jupyter-tunnel --submit`` on the namespace Grid Engine cluster, next to the job's own start-up.

The claim under test: submitting through the tunnel costs about one bare login through the
chain more than the job itself takes to come up.  A separate script, not a kind of
benchmarks/ready.py: it needs the namespace cluster (client -> gw -> head -> node, the node
reachable only from the head; tests/netns.py), a Grid Engine cell in it, and a job start-up
of seconds per run, none of which ready.py's single-sshd rows need.  It reuses ready.py's
tool runner (run_tool: time to ready, SIGINT, nothing of the run left) and table helpers,
and the tests' set-up functions (tests/realenv.py, tests/cluster.py, tests/netns.py).

``--runs`` times (after one warm-up of each):

(s) ``ssh -J gw head true``: a bare login through the chain;
(a) the job's own start-up, by hand on the head: ``python3 - -t lab --pre ACTIVATE -w 120
    --json`` with jupyter_node.py's source on stdin (as --submit sends it), timed on the
    head from submission until jupyter_node.py has seen the server's runtime file and
    printed its JSON; the job is cancelled after;
(b) ``jupyter-tunnel --submit --new --stop-server -t lab --pre ACTIVATE -s gw head -b none``
    from its start until the printed URL answers ``/api/status`` with the token; then
    SIGINT, its exit (its --stop-server cancels the job), and no job left before the next run;
(c) the logins in the three sshd logs during (b): one on gw, one on head, one head -> node.

Target: (b) <= (a) + (s) + 0.5 s on the medians.  (s) pays the client's login through
gw to head, which the by-hand run on the head does not count; the 0.5 s is the rest of the
tunnel's own work: its start-up, the head -> node login of the discovery, the forward and
the probe through it (each some tens of ms here), with room for the 2-core machine's noise
while Jupyter starts.

Run as root on a Debian machine with Grid Engine installed, with the test venv's Python:
``/opt/jupyter-tunnel-test/bin/python benchmarks/submit.py``.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # jupyter_node (the head's name, its source)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # ready, also when imported as benchmarks.submit

import ready  # noqa: E402  (puts tests/ on sys.path)
import realenv  # noqa: E402
from cluster import ClusterUser, setup_cluster_user, stop_user_jobs_and_servers, this_host  # noqa: E402
from helpers import wait_for  # noqa: E402
from jupyter_node import head_name  # noqa: E402
from netns import NetnsHosts, SgeNetns, known_hosts_line, netns_down, netns_up, sge_netns_down, sge_netns_up  # noqa: E402
from test_cluster_jobs import activate  # noqa: E402  (--pre, as the --submit tests pass it)

DEFAULT_RUNS = 3
WAIT = "120"  # jupyter_node's -w: far above the expected start-up, it only bounds a hang
JOB_TIMEOUT = 180.0
TARGET_SLACK = 0.5  # seconds: (b) <= (a) + (s) + this
EXPECTED_LOGINS = {"gw": 1, "head": 1, "node": 1}

# Timed on the head, as a person would run it there: python3 reads jupyter_node.py's source
# on stdin (ssh's), date does not read it.
BY_HAND = 't0=$(date +%s.%N); cd && python3 - {args} --json >/dev/null || exit 1; echo "startup $t0 $(date +%s.%N)"'


@dataclass
class SubmitRow:
    """The samples of the --submit row (seconds; logins per host per run)."""

    runs: int
    ssh: List[float] = field(default_factory=list)  # (s)
    job: List[float] = field(default_factory=list)  # (a)
    ready: List[float] = field(default_factory=list)  # (b)
    logins: List[Dict[str, int]] = field(default_factory=list)  # (c)
    # (b) split by the tool's messages (ready.PHASES): the job's wait is in "discover+forward+probe"
    phases: Dict[str, List[Optional[float]]] = field(default_factory=dict)


# --------------------------------------------------------------------------- pure parts


def node_args(activate: str) -> List[str]:
    """jupyter_node.py's arguments, the same for (a) as --submit passes for (b)."""
    return ["-t", "lab", "--pre", activate, "--scheduler", "sge", "-w", WAIT]


def tool_args(config: Path, activate: str) -> List[str]:
    """The tool's arguments for (b)."""
    return ["-F", str(config), "-b", "none", "--submit", "--new", "--stop-server", "-t", "lab", "--pre", activate,
            "--scheduler", "sge", "-w", WAIT, "-s", "gw", "head"]


def format_logins(logins: Sequence[Dict[str, int]]) -> str:
    """``gw 1, head 1, node 1`` when every run logged in alike, else each run's in turn."""
    shown = sorted({", ".join(f"{host} {n}" for host, n in sorted(run.items(), key=_host_order)) or "none"
                    for run in logins})
    return " / ".join(shown) if shown else "–"


def _host_order(item: "tuple[str, int]") -> int:
    """gw, head, node: the chain's order."""
    return list(EXPECTED_LOGINS).index(item[0]) if item[0] in EXPECTED_LOGINS else len(EXPECTED_LOGINS)


def build_table(row: SubmitRow) -> str:
    """The --submit row as a Markdown table, seconds."""
    job, tunnel, ssh = (ready.summarize(s) for s in (row.job, row.ready, row.ssh))
    extra = "–" if not (job and tunnel) else f"{tunnel.median - job.median:.3f}"
    header = ["run", "runs", "(a) job start-up s", "(b) ready s", "(b)−(a) s", "(s) ssh -J gw head true s", "logins"]
    return ready._markdown(header, [["--submit, SGE gw → head → node", str(row.runs), ready.format_stats(job),
                                     ready.format_stats(tunnel), extra, ready.format_stats(ssh),
                                     format_logins(row.logins)]])


def build_phase_table(row: SubmitRow) -> str:
    """Where (b) goes, by the tool's own messages: medians in seconds."""
    header = [f"{name} s" for name in ready.PHASES]
    return ready._markdown(header, [[ready.format_stats(ready.summarize(row.phases.get(name, [])))
                                     for name in ready.PHASES]])


def check_targets(row: SubmitRow) -> List["tuple[str, bool, str]"]:
    """(target, met, detail) on the medians."""
    checks = []
    job, tunnel, ssh = (ready.summarize(s) for s in (row.job, row.ready, row.ssh))
    if job and tunnel and ssh:
        limit = job.median + ssh.median + TARGET_SLACK
        checks.append((f"(b) <= (a) + (s) + {TARGET_SLACK:g} s", tunnel.median <= limit,
                       f"{tunnel.median:.3f} s vs {limit:.3f} s"))
    checks.append(("(c) one login on gw, head and node on every run",
                   bool(row.logins) and all(run == EXPECTED_LOGINS for run in row.logins),
                   f"logins per run: {format_logins(row.logins)}"))
    return checks


def build_report(row: SubmitRow) -> str:
    """Table and targets."""
    m = ready.machine_info()
    lines = [f"Machine: {m['cpus']} × {m['cpu'] or 'CPU'}, {m['system']}, OpenSSH {m['openssh']}, "
             f"Python {m['python']}; {row.runs} runs after a warm-up; median [min–max].", "", build_table(row), "",
             "Where (b) goes (from the tool's time-stamped messages; the job's submission and wait are in "
             "discover+forward+probe):", "", build_phase_table(row), "", "Targets:", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}: {detail}" for name, ok, detail in check_targets(row)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- I/O parts


class ChainLogins:
    """The three hosts' sshd logs behind ready.run_tool's login counter (log_offset, logins_since)."""

    def __init__(self, hosts: NetnsHosts) -> None:
        self.hosts = hosts
        self.last: Dict[str, int] = {}  # host -> logins, of the last logins_since (run_tool keeps only the sum)

    def log_offset(self) -> Dict[str, int]:
        """Current size of every host's sshd log."""
        return self.hosts.log_offsets()

    def logins_since(self, offset: Dict[str, int]) -> List[str]:
        """One host name per login since ``offset``."""
        self.last = {host: len(users) for host, users in self.hosts.logins_since(offset).items() if users}
        return [host for host, n in self.last.items() for _ in range(n)]


def time_ssh(hosts: NetnsHosts) -> float:
    """(s): seconds of ``ssh -J gw head true``."""
    start = time.monotonic()
    done = hosts.ssh("-J", "gw", "head", "true", timeout=ready.SSH_TIMEOUT)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise ready.BenchmarkError(f"ssh -J gw head true failed: {done.stderr}")
    return elapsed


def no_job_left(cell: SgeNetns) -> None:
    """Cancel what is left and wait until the cell has no job: each run starts from none."""
    cell.qdel_all()
    wait_for(lambda: not cell.jobs(), 60, interval=0.2, what="the cell to have no job")


def time_job_startup(hosts: NetnsHosts, cell: SgeNetns, user: ClusterUser) -> float:
    """(a): seconds from submission to a ready server, jupyter_node.py run by hand on the head."""
    command = BY_HAND.format(args=" ".join(map(shlex.quote, node_args(activate(user)))))
    try:
        done = subprocess.run(["ssh", "-F", str(hosts.config), "-J", "gw", "head", command],
                              input=(REPO / "jupyter_node.py").read_text(), capture_output=True, text=True,
                              env=ready.tool_env(), timeout=JOB_TIMEOUT)
    finally:
        no_job_left(cell)
    seconds = ready.parse_startup(done.stdout)
    if done.returncode != 0 or seconds is None:
        raise ready.BenchmarkError(f"jupyter_node.py on the head failed ({done.returncode}): {done.stderr}")
    return seconds


def measure(hosts: NetnsHosts, cell: SgeNetns, user: ClusterUser, tool: ready.Tool, runs: int) -> SubmitRow:
    """The row: a warm-up of (a) and (b), then ``runs`` of (s), (a), (b)+(c)."""
    logins = ChainLogins(hosts)
    args = tool_args(hosts.config, activate(user))
    row = SubmitRow(runs)
    time_job_startup(hosts, cell, user)  # warm-up: the page cache's and the cell's first job
    ready.run_tool(tool, args, logins)
    no_job_left(cell)
    for i in range(runs):
        ready.note(f"--submit: run {i + 1} of {runs}...")
        row.ssh.append(time_ssh(hosts))
        row.job.append(time_job_startup(hosts, cell, user))
        try:
            run = ready.run_tool(tool, args, logins)
        finally:
            no_job_left(cell)  # --stop-server cancelled it; make sure
        row.ready.append(run.ready)
        row.logins.append(logins.last)
        for name in ready.PHASES:
            row.phases.setdefault(name, []).append(run.phases.get(name))
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 when it ran (target met or not), 1 when it could not, 130 on Ctrl+C."""
    parser = argparse.ArgumentParser(prog="benchmarks/submit.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="measured runs [default: %(default)s]")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, ready._raise_keyboard_interrupt)
    hosts = cell = None
    try:
        with realenv.environment(ready.USER, on_wait=ready.note) as (sshd, _server, directory):
            venv = Path(sys.prefix)
            user = setup_cluster_user(sshd, directory, venv, head_name(), this_host())
            try:
                hosts = netns_up(directory / "netns", sshd.dir / "authorized_keys", sshd.client_key, user.name)
                # the head's `ssh node` must know node's host key (the user's home is shared by all hosts)
                with open(user.home / ".ssh" / "known_hosts", "a") as f:
                    f.write(known_hosts_line(hosts, "node") + "\n")
                cell = sge_netns_up()
                tool = ready.prepare_tool(sys.executable, ready.SCRIPT, "installed", directory)
                row = measure(hosts, cell, user, tool, args.runs)
            finally:
                if cell is not None:
                    sge_netns_down(cell)
                stop_user_jobs_and_servers(user)
                netns_down(hosts)
    except (realenv.SetupError, ready.BenchmarkError, AssertionError) as err:
        ready.note(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        ready.note("interrupted")
        return 130
    sys.stdout.write(build_report(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
