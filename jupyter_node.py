#!/usr/bin/env python3
"""Start a Jupyter server on a compute node of a cluster, from the head node.

The companion of ``jupyter-tunnel`` and the port of the original ``jupyter-node.sh``: run it
on the head node; it submits the server as a job and prints the command to run on your own
computer, ``jupyter-tunnel -s [GATEWAY ...] USER@HEAD -n NODE``.  The flow:

1. check: the scheduler's commands are on PATH (Grid Engine: ``qrsh``; Slurm: ``sbatch`` and
   ``squeue``), and ``jupyter`` too unless an environment is activated on the node first
   (``--conda-env``, ``--pre``: then ``jupyter`` usually exists only after that).
2. log: a new private log file (mode 0600; a path given with ``-l`` is made 0600 too): the
   server prints its token there, so it must not be readable by other users.
3. submit a ``sh`` script that, on the node, prints a marker line (job id and the node's
   FQDN), runs the activation commands, then ``exec jupyter lab|notebook --no-browser
   --ip=$(hostname --fqdn)``: the ``$(...)`` is evaluated on the node, so the server listens
   on the node's name, which the head node can reach.

   * Grid Engine: ``qrsh -w e -V -now no -cwd -N JOB [-l q=QUEUE] [-l h=NODE] [-l RES]...
     "sh -c SCRIPT"`` started in the background, in a session of its own, with all its output
     in the log.  The job lives as long as that ``qrsh``, which outlives this script, Ctrl+C
     and the user's ssh session on the head.  ``-w e`` makes a request that can never be
     granted (unknown queue or host) an error at once instead of a job waiting forever.
   * Slurm: ``sbatch --parsable -J JOB -o LOG --open-mode=append [--partition=QUEUE]
     [--nodelist=NODE] [--RES]... --wrap SCRIPT``: a batch job, independent of any session.

4. wait (``-w``, sleep syntax; ``0``: don't): until the server prints its URL in the log
   (report the node, the job, its time left and the ``jupyter-tunnel`` command), the job
   ends (``Error:`` with the log's last lines), or the time is up (report what is known so
   far).  Each change of state on the way is an ``Info:`` line.

``--jobs``/``--job ID`` list the user's Jupyter jobs instead (``squeue``; ``qstat -xml``; both
on a head that has both: nothing to choose when nothing is submitted), with the time they have
left; ``--reuse`` waits for such a job rather than submitting another one;
``--cancel ID`` ends one.  ``--json`` prints the outcome as one JSON object on stdout, for
jupyter-tunnel --submit and -n auto, which run this file on the head through their login.

Only the standard library is used, and this file imports nothing from jupyter_tunnel.py: it
is the one file to copy onto a head node where nothing can be installed.  It runs on Python
3.6 (the ``python3`` of RHEL/Rocky 8 and CentOS 7 head nodes: no ``from __future__ import
annotations``, no dataclasses, nothing newer) and as ``python3 - ARGS < jupyter_node.py``,
which is how jupyter-tunnel --submit runs it through its ssh master.
"""

import argparse
import configparser
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from typing import Callable, Collection, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

__version__ = "0.1.0"

# Exit codes, as jupyter_tunnel.py's where they overlap.
EXIT_OK = 0
EXIT_ERROR = 1  # the job could not be submitted, or it ended before the server was up
EXIT_USAGE = 2  # bad option (argparse)
EXIT_MISSING = 3  # qrsh/sbatch or jupyter is not on PATH
EXIT_INTERRUPTED = 130  # Ctrl+C while waiting (the job keeps running)

APPS = ("notebook", "lab")
JOB_NAMES = {"notebook": "notebook", "lab": "jp-lab"}  # the original's job names
APP_OF_NAME = {name: app for app, name in JOB_NAMES.items()}
SCHEDULERS = ("sge", "slurm")
CANCEL_COMMANDS = {"sge": "qdel", "slurm": "scancel"}  # what ends a job of each
SCHEDULER_NAMES = {"sge": "Grid Engine", "slurm": "Slurm"}  # for messages
DEFAULT_WAIT = "15s"
# sleep(1) syntax, as the original checked it: a number and an optional unit
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The marker line the job prints first on the node (see build_server_script).
MARK = "::jupyter-node::"
MARK_RE = re.compile(re.escape(MARK) + r" job (\S*) node (\S+)")
# The line the job prints when an activation command fails (see build_server_script).
FAIL_RE = re.compile(re.escape(MARK) + r" fail (.*)")
# The lines jupyter-node writes in the log itself: the scheduler, before submitting, and the
# job id as soon as it is known (sbatch tells it; qrsh does not, the job's marker will): what
# tells whose job a log is, when the logs of ended jobs are removed (ended_logs).
SUBMIT_RE = re.compile(re.escape(MARK) + r" submit(?:ting|ted) to (sge|slurm)(?: as job (\S+))?")
# The logs' own directory, under the user's home, which the nodes share (a Slurm job writes its
# log from the node): ${XDG_STATE_HOME:-~/.local/state}/jupyter-node, as jupyter-tunnel's.
LOG_DIR_NAME = "jupyter-node"
# Seconds a new log is left alone whatever the listing says: a submission under way (sbatch may
# take a minute) has no job id in its log yet, nor in the scheduler's listing.
LOG_GRACE = 600.0
LOG_HEAD = 65536  # bytes of a log read to tell whose job it is: its first lines say it
# Jupyter logs "http://NODE:PORT/lab?token=..." once it listens: the sign it is ready.
URL_RE = re.compile(r"\bhttps?://(?:\[[^\]\s]+\]|[^\s/:\[]+):(\d+)/")
# Characters a terminal acts on instead of showing them: C0 (newline, ESC starting an ANSI
# sequence, ...), DEL, C1 (0x9b is an 8-bit CSI), and the Unicode controls that break or
# reorder a line on screen.  escape_text shows them as Python escapes (\n, \x1b, \u202e).
UNPRINTABLE = (*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, 0x2028, 0x2029,
               *range(0x202A, 0x202F), *range(0x2066, 0x206A))
ESCAPES = {code: chr(code).encode("unicode_escape").decode() for code in UNPRINTABLE}
POLL_INTERVAL = 0.2  # seconds between two reads of the log
# Seconds between two questions to a scheduler's controller (squeue): every request costs
# it, and a job waiting in the queue may wait for hours.
SCHEDULER_POLL_FIRST = 0.5
SCHEDULER_POLL_MAX = 10.0
LOG_TAIL = 15  # lines of the log shown with an error
# A job id as qstat/squeue print it (and as --job/--cancel accept it: it goes on a command line)
# never starting with "-": qdel/scancel would read it as one of their options
JOB_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*")  # always with fullmatch: "4711\n" is no id
# What str.splitlines() breaks lines at: an option value that goes into a one-line script or
# a marker line read back by lines (--pre, --conda-env) must hold none, or it would be cut.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# What squeue's %L and Grid Engine's time values say for "no limit" (squeue(1), queue_conf(5))
NO_LIMIT = ("UNLIMITED", "NOT_SET", "INVALID", "INFINITY", "")
NO_TIME_LIMIT = "no time limit"  # ...and what the three tools print for it (format_time_left)
# Grid Engine prints JAT_start_time in the local time of the host that runs qstat, without zone
SGE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# squeue -o: id, name, state, node list, time left, reason (the fields of JobRow, in order)
SQUEUE_FORMAT = "%i|%j|%T|%N|%L|%r"
SLURM_WAITING = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED")
SLURM_DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
              "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


class NodeError(Exception):
    """A failure to report as one ``Error:`` line (plus details), with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_ERROR, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class LogInfo(NamedTuple):
    """What the log tells so far."""

    job_id: str = ""  # from the marker line (Grid Engine's $JOB_ID, Slurm's $SLURM_JOB_ID)
    node: str = ""  # the node's FQDN, as the job printed it: the server listens there
    port: int = 0  # the server's port, once it printed its URL (it is ready then)
    failure: str = ""  # the activation command that failed ("failed: CMD"), as the job printed it


class JobState(NamedTuple):
    """One look at the job: ``pending``, ``running``, ``ready`` or ``failed``."""

    state: str
    node: str = ""
    port: int = 0
    detail: str = ""  # why it fails, or the scheduler's reason a pending job waits


class JobRow(NamedTuple):
    """One of the user's jobs as the scheduler lists it (the ``--jobs`` JSON fields)."""

    job: str
    name: str
    state: str  # "running" or "pending"
    node: str = ""
    time_left: Optional[int] = None  # seconds; None: no limit, or not known
    reason: str = ""  # why a pending job waits, in the scheduler's words


class SgeEntry(NamedTuple):
    """A job of ``qstat -xml -r``, before its time left is worked out."""

    job: str
    name: str
    state: str  # "running" or "pending"
    node: str
    queue: str  # the queue it runs in (all.q of all.q@node07), or the one it asked for
    start: str  # JAT_start_time ("" while pending)
    h_rt: Optional[int]  # the job's own hard h_rt request; None: the queue's limit applies
    reason: str


# --------------------------------------------------------------------------- pure parts


def parse_duration(text: str) -> float:
    """Seconds from sleep syntax (``15s``, ``2m``, ``1.5h``, ``1d``, ``30``); ValueError otherwise."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise ValueError(f"invalid wait time {text!r}: use sleep syntax, e.g. 15s, 2m, 1.5h or 0")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def build_activation(pre: Sequence[str] = (), conda_env: str = "") -> List[str]:
    """The ``sh`` commands that activate the server's environment, in order (``--pre`` first:
    it may be ``module load conda``).  Shared with jupyter_tunnel.py's ``--start``."""
    activate = list(pre)
    if conda_env:
        # `conda activate` needs the shell function set up by `conda init` in an interactive
        # shell; `conda shell.posix activate` prints the same settings for any POSIX sh.
        # "|| echo false": eval of nothing succeeds, so a conda that fails must fail the eval
        activate.append(f'eval "$(conda shell.posix activate {shlex.quote(conda_env)} || echo false)"')
    return activate


def build_activation_steps(pre: Sequence[str] = (), conda_env: str = "") -> List[str]:
    """The activation commands as ``sh`` lines, one each: ``command eval 'CMD' </dev/null ||
    fail 'failed: CMD'`` (the script defines ``fail``).  Shared with ``--start``.

    eval keeps what the user wrote inside its own text: a ``# comment`` or a trailing ``&``
    cannot eat or break the next command.  ``command`` takes away eval's special-builtin
    exit: a failing ``.`` (a missing activate script, one with a syntax error) makes eval
    return non-zero instead of ending sh before ``|| fail`` runs (POSIX command(1p); dash and
    bash --posix behave so).  stdin from /dev/null: ``sh -s`` reads its script there.
    """
    return [f"command eval {shlex.quote(command)} </dev/null || fail {shlex.quote('failed: ' + command)}"
            for command in build_activation(pre, conda_env)]


def build_server_script(app: str, pre: Sequence[str] = (), conda_env: str = "",
                        config: str = "") -> str:
    """The ``sh`` script the job runs on the node (one line: qrsh joins it into a command line).

    The marker comes first, so the node and job are known even if the server fails.  The
    activation commands run in order (``--pre`` first: it may be ``module load conda``),
    each must succeed (a failing one prints ``MARK fail failed: CMD``, which parse_log reads,
    and ends the job), and ``exec`` makes the server the job's own process, so that ``qdel``
    or ``scancel`` stops it.
    """
    server = f'exec jupyter {app} --no-browser "--ip=$(hostname --fqdn)"'
    if config:
        server += f" {shlex.quote('--config=' + config)}"
    return "; ".join([
        f'echo "{MARK} job ${{JOB_ID:-${{SLURM_JOB_ID:-}}}} node $(hostname --fqdn)"',
        # printf, not echo: dash's echo would turn a backslash in the command into a newline
        f"fail() {{ printf '%s\\n' \"{MARK} fail $1\"; exit 1; }}",
        *build_activation_steps(pre, conda_env),
        server,
    ])


def build_resource_args(scheduler: str, resources: Sequence[str]) -> List[str]:
    """The scheduler arguments for ``-r`` values.

    ``NAME=VALUE`` is a resource request: ``-l NAME=VALUE`` for Grid Engine, ``--NAME=VALUE``
    for Slurm (``mem=4G`` -> ``--mem=4G``).  A value that starts with ``-`` is passed as it is,
    split like a shell would (``--resource="-pe smp 4"``, ``--resource=--exclusive``).
    """
    args = []  # type: List[str]
    for value in resources:
        value = value.strip()
        if not value:
            continue
        if value.startswith("-"):
            args.extend(shlex.split(value))
        elif scheduler == "sge":
            args += ["-l", value]
        else:
            args.append(f"--{value}")
    return args


def build_qrsh_argv(qrsh: str, app: str, script: str, queue: str = "", node: str = "",
                    resources: Sequence[str] = ()) -> List[str]:
    """argv of the ``qrsh`` that runs the server as a Grid Engine job."""
    argv = [qrsh, "-w", "e", "-V", "-now", "no", "-cwd", "-N", JOB_NAMES[app]]
    if queue:
        argv += ["-l", f"q={queue}"]
    if node:
        argv += ["-l", f"h={node}"]
    argv += build_resource_args("sge", resources)
    # qrsh joins its arguments into one command line for the user's login shell on the node
    # (which may be csh): hand it one `sh -c '...'` so that the script runs under sh
    return argv + [f"sh -c {shlex.quote(script)}"]


def build_sbatch_argv(sbatch: str, app: str, script: str, log: str, queue: str = "",
                      node: str = "", resources: Sequence[str] = ()) -> List[str]:
    """argv of the ``sbatch`` that submits the server as a Slurm batch job."""
    argv = [sbatch, "--parsable", "-J", JOB_NAMES[app], "-o", log, "--open-mode=append"]
    if queue:
        argv.append(f"--partition={queue}")
    if node:
        argv.append(f"--nodelist={node}")
    argv += build_resource_args("slurm", resources)
    return argv + ["--wrap", script]


def parse_log(text: str) -> LogInfo:
    """Job id, node and (once it listens) the server's port, from the log so far."""
    marker = None
    for marker in MARK_RE.finditer(text):
        pass  # the last one: a log given with -l may hold earlier runs
    if marker is None:
        return LogInfo()
    url = URL_RE.search(text, marker.end())
    failed = FAIL_RE.search(text, marker.end())
    return LogInfo(marker.group(1), marker.group(2), int(url.group(1)) if url else 0,
                   failed.group(1).strip() if failed else "")


def parse_log_owner(text: str) -> Tuple[str, str]:
    """(scheduler, job id) of a log this tool made, from its first lines ("" for what is not
    there yet: a qrsh's job id comes only once the job runs and prints its marker)."""
    scheduler, job_id = "", ""
    for line in SUBMIT_RE.finditer(text):
        scheduler, job_id = line.group(1), line.group(2) or job_id
    return scheduler, job_id or parse_log(text).job_id


def build_log_dir(environ: Dict[str, str], home: str) -> str:
    """The logs' directory: $XDG_STATE_HOME/jupyter-node, else ~/.local/state/jupyter-node
    (a relative XDG_STATE_HOME is none: the XDG Base Directory spec says to ignore it)."""
    state = environ.get("XDG_STATE_HOME", "")
    base = state if os.path.isabs(state) else os.path.join(home, ".local", "state")
    return os.path.join(base, LOG_DIR_NAME)


def ended_logs(logs: Sequence[Tuple[str, str, float]], listings: Dict[str, Sequence[JobRow]],
               now: float) -> List[str]:
    """The logs to remove, of ``logs`` (path, first lines, mtime): those of jobs that ended.

    ``listings``: the pending and running jobs of each scheduler that was asked; a log of
    another scheduler, of none known, or younger than LOG_GRACE is kept.  A log without a job
    id (a Grid Engine job still pending, a submission that failed) goes only when every Jupyter
    job of its scheduler has a log of its own: else it may be that job's.
    """
    owners = {path: parse_log_owner(text) for path, text, _ in logs}
    known = set(owners.values())
    unaccounted = {scheduler for scheduler, rows in listings.items()
                   if any(row.name in JOB_NAMES.values() and (scheduler, row.job) not in known for row in rows)}
    ended = []
    for path, _, mtime in logs:
        scheduler, job_id = owners[path]
        if scheduler not in listings or now - mtime < LOG_GRACE:
            continue
        if job_id and all(row.job != job_id for row in listings[scheduler]):
            ended.append(path)
        elif not job_id and scheduler not in unaccounted:
            ended.append(path)
    return ended


def parse_squeue(output: str) -> Tuple[str, str, str]:
    """(state, node list, reason) from ``squeue -h -o '%T|%N|%r'``; empty strings once the job is gone."""
    fields = [field.strip() for field in output.strip().split("|")]
    fields += [""] * (3 - len(fields))
    return fields[0], fields[1], fields[2]


def slurm_waiting(state: str, reason: str) -> str:
    """Why a job that does not run yet waits: squeue's reason (``Resources``), after the state
    when it is not plain PENDING (``suspended: ...``); squeue says None or (null) for none."""
    reason = "" if reason in ("None", "(null)") else reason
    if state == "PENDING":
        return reason
    return f"{state.lower()}: {reason}" if reason else state.lower()


def parse_clock(text: str) -> Optional[int]:
    """Seconds from a scheduler's time value; None for no limit.

    squeue's %L is ``[days-]hours:minutes:seconds`` with leading fields left out (``9:58``),
    or UNLIMITED/NOT_SET/INVALID; Grid Engine's is ``[[hours:]minutes:]seconds`` or INFINITY.
    """
    text = text.strip()
    if text.upper() in NO_LIMIT:
        return None
    days, dash, clock = text.rpartition("-")
    parts = clock.split(":")
    if len(parts) > 3 or not all(part.isdigit() for part in parts) or (dash and not days.isdigit()):
        raise ValueError(f"not a time: {text!r}")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def time_left(start: Optional[float], limit: Optional[int], now: float) -> Optional[int]:
    """Seconds a job has left: the whole ``limit`` before it starts, none below zero."""
    if limit is None:
        return None
    if start is None:
        return limit
    return max(0, int(start + limit - now))


def parse_sge_start(text: str) -> Optional[float]:
    """Epoch seconds of a JAT_start_time (local time: qstat ran here); None when there is none."""
    text = text.strip().split(".")[0]  # some Grid Engines add milliseconds
    if not text:
        return None
    try:
        return time.mktime(time.strptime(text, SGE_TIME_FORMAT))
    except (ValueError, OverflowError):
        return None


def parse_squeue_jobs(output: str) -> List[JobRow]:
    """The pending and running jobs of ``squeue -h -o '%i|%j|%T|%N|%L|%r'``."""
    rows = []
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) != 6 or not JOB_ID_RE.fullmatch(fields[0].strip()):
            continue
        job, name, state, nodes, left, reason = (field.strip() for field in fields)
        if state == "RUNNING":
            kind, reason = "running", ""
        elif state in SLURM_WAITING:
            kind, reason = "pending", slurm_waiting(state, reason)
        else:
            continue  # completing or done
        try:
            seconds = parse_clock(left)
        except ValueError:
            seconds = None
        rows.append(JobRow(job, name, kind, nodes, seconds, reason))
    return rows


def parse_qstat_xml(text: str) -> List[SgeEntry]:
    """The pending and running jobs of ``qstat -xml -r -u USER`` (Son of Grid Engine 8.1)."""
    import xml.etree.ElementTree as ElementTree  # here: jupyter-tunnel imports this module

    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise NodeError(f"qstat printed no XML that can be read ({error})") from None
    entries = []
    for item in root.iter("job_list"):
        def field(tag: str) -> str:
            return (item.findtext(tag) or "").strip()

        code = field("state")  # r, t, qw, hqw, Eqw, dr, s...
        if "d" in code or not JOB_ID_RE.fullmatch(field("JB_job_number")):
            continue  # being deleted: it is going away
        h_rt = None
        for request in item.iter("hard_request"):
            if request.get("name") == "h_rt":
                try:
                    h_rt = parse_clock(request.text or "")
                except ValueError:
                    pass
        queue, _, node = field("queue_name").partition("@")
        reasons = [word for letter, word in (("h", "on hold"), ("E", "error state"), ("s", "suspended"),
                                             ("S", "suspended"), ("T", "suspended")) if letter in code]
        running = item.get("state") == "running" and ("r" in code or "t" in code)
        entries.append(SgeEntry(field("JB_job_number"), field("JB_name"), "running" if running else "pending",
                                node if running else "", queue or field("hard_req_queue"),
                                field("JAT_start_time") if running else "", h_rt, ", ".join(reasons)))
    return entries


def parse_qconf_h_rt(text: str, host: str = "") -> Optional[int]:
    """A queue's h_rt from ``qconf -sq QUEUE`` (``INFINITY,[node07=2:00:00]``: a host's own value first)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key != "h_rt":
            continue
        value = "".join(value.split())
        default, *overrides = value.split(",[")
        for override in overrides:
            name, _, limit = override.rstrip("]").partition("=")
            if host and name in (host, host.split(".")[0]):
                return parse_clock(limit)
        return parse_clock(default)
    return None


def build_sge_rows(entries: Sequence[SgeEntry], queue_limits: Dict[str, Optional[int]],
                   now: float) -> List[JobRow]:
    """JobRows with time left: start + h_rt (the job's, else its queue's) - now."""
    rows = []
    for entry in entries:
        limit = entry.h_rt if entry.h_rt is not None else queue_limits.get(entry.queue)
        rows.append(JobRow(entry.job, entry.name, entry.state, entry.node,
                           time_left(parse_sge_start(entry.start), limit, now), entry.reason))
    return rows


def parse_scontrol_stdout(text: str) -> str:
    """The job's output file (StdOut=) from ``scontrol -o show job ID``: the log it writes to."""
    for item in text.split():
        if item.startswith("StdOut="):
            return item[len("StdOut="):]
    return ""


def job_to_reuse(rows: Sequence[JobRow], names: Sequence[str]) -> Optional[JobRow]:
    """The Jupyter job to reuse: a running one first, else one still waiting."""
    ours = [row for row in rows if row.name in names]
    ours.sort(key=lambda row: row.state != "running")
    return ours[0] if ours else None


def format_time_left(seconds: Optional[float]) -> str:
    """A job's time left as all three tools print it, rounded down: ``45 s``, ``9 min``,
    ``1 h 30 min``, ``2 d 3 h``; NO_TIME_LIMIT for None (no limit, or none known)."""
    if seconds is None:
        return NO_TIME_LIMIT
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60 % 60, seconds // 3600 % 24, seconds // 86400
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart, the last one not padded; cells escaped
    (root directories, versions and registry entries come from others).

    Shared with jupyter_tunnel.py and jupyter_tunnel_shutdown.py: every table of the tools.
    """
    if not rows:
        return ""
    rows = [[escape_text(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_jobs(rows: Sequence[JobRow], schedulers: Sequence[str] = ()) -> str:
    """The ``--jobs`` table for people (format_table escapes it: with --job ID the name is
    any job's, and the reason is the scheduler's); with ``schedulers`` (each row's, when two
    were asked) a SCHEDULER column says which one each job is in."""
    which = list(schedulers) or [""] * len(rows)
    columns = slice(None) if schedulers else slice(1, None)
    return format_table([("SCHEDULER", "JOB", "NAME", "STATE", "NODE", "TIME LEFT", "REASON")[columns]]
                        + [(scheduler, row.job, row.name, row.state, row.node or "-", format_time_left(row.time_left),
                            row.reason)[columns] for scheduler, row in zip(which, rows)])


def build_result(scheduler: str, job_id: str, name: str, state: JobState, log: str,
                 seconds_left: Optional[int], existing: bool) -> Dict[str, object]:
    """The ``--json`` object for a submitted (or reused) job."""
    failed = state.state == "failed"
    return {"scheduler": scheduler, "job": job_id, "name": name, "state": state.state, "node": state.node,
            "port": state.port or None, "reason": "" if failed else state.detail, "log": log,
            "time_left": seconds_left, "existing": existing, "error": state.detail if failed else None}


def progress_line(job_id: str, state: JobState, wait: str = "") -> str:
    """The ``Info:`` line for a job that became pending or running while we wait for it; the
    first one says how long the wait may be (``wait``, -w's text)."""
    where = f"job {job_id}" if job_id else "the job"
    up_to = f"up to {wait} " if wait else ""
    if state.state == "pending":
        waiting = f"; waiting {up_to}for it to start..." if wait else ""
        return f"{where} is pending{f' ({state.detail})' if state.detail else ''}{waiting}"
    return f"{where} is running on {state.node}; waiting {up_to}for Jupyter..."


def choose_scheduler(have_sge: bool, have_slurm: bool) -> str:
    """The scheduler to submit to when ``--scheduler`` is not given: the one on PATH."""
    if have_sge and have_slurm:
        raise NodeError("found both Grid Engine (qrsh) and Slurm (sbatch) on PATH: choose the one to submit "
                        "to with --scheduler sge|slurm", EXIT_MISSING)
    return found_schedulers(have_sge, have_slurm)[0]


def found_schedulers(have_sge: bool, have_slurm: bool) -> List[str]:
    """The schedulers to ask when ``--scheduler`` is not given and nothing is submitted
    (--jobs, --job, --cancel): every one on PATH."""
    found = [name for name, have in (("sge", have_sge), ("slurm", have_slurm)) if have]
    if not found:
        raise NodeError("found neither qrsh nor sbatch/srun on PATH: choose with --scheduler sge|slurm", EXIT_MISSING)
    return found


def build_tunnel_command(head: str, node: str) -> str:
    """The command to run on your computer to reach the server."""
    return f"jupyter-tunnel -s {shlex.quote(head)} -n {shlex.quote(node)}"


def split_host_list(value: str) -> List[str]:
    """The hosts of one jupyter-tunnel ``-s`` value: ``"gw srv"`` and ``gw,srv`` hold two.

    Shared with jupyter_tunnel.py and jupyter_tunnel_shutdown.py (which reads tunnels' argv).
    """
    return value.replace(",", " ").split()


def split_host(host: str) -> Tuple[str, str, str]:
    """``(user, name, port)`` of ``[ssh://][user@]name[:port]``; empty strings for what is missing."""
    if host.startswith("ssh://"):
        host = host[len("ssh://"):]
    user, _, name = host.rpartition("@")
    port = ""
    if name.count(":") == 1 and name.split(":")[1].isdigit():
        name, port = name.split(":")
    return user, name, port


def doubling_delays(first: float, cap: float) -> Iterator[float]:
    """Waits that back off: ``first``, doubled each time, capped at ``cap`` (for the scheduler's
    questions here, for jupyter_tunnel.py's reconnection attempts)."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def last_lines(lines: Iterable[str], count: int = LOG_TAIL) -> List[str]:
    """The last ``count`` lines that are not blank, as they are: a log's end for an error
    (shared with jupyter_tunnel.py, which shows a started server's log so)."""
    return [line for line in lines if line.strip()][-count:]


def log_tail(text: str, lines: int = LOG_TAIL) -> str:
    """The last lines of the log, indented, for an error message; never our own MARK lines
    (the job's node and id are told in words, its failure in the message itself)."""
    kept = last_lines([line for line in text.splitlines() if not line.startswith(MARK)], lines)
    return "\n".join(f"    {line}" for line in kept) if kept else "    (the log is empty)"


# --------------------------------------------------------------------------- messages


def escape_text(text: str) -> str:
    """``text`` with every character a terminal would act on shown escaped (see ESCAPES)."""
    return text.translate(ESCAPES)


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character that escape_text would escape."""
    return any(ord(char) in ESCAPES for char in text)


def describe_os_error(error: Exception) -> str:
    """An OSError for an ``Error:`` line: ``Permission denied: /path/of/it``."""
    where = f": {error.filename}" if getattr(error, "filename", None) else ""
    return f"{getattr(error, 'strerror', None) or error}{where}"


def say(kind: str, text: str) -> None:
    """Print an ``Info:``, ``Warning:``, ``Error:`` or ``Debug:`` line on stderr.

    Shared with jupyter_tunnel.py.  ``text`` is shown escaped (escape_text): it often quotes
    a scheduler or a remote (a reason, a root directory, ssh's words), whose newlines or ANSI
    sequences would otherwise forge lines or drive the terminal.  Coloured only on a
    terminal, never with NO_COLOR (https://no-color.org) or TERM=dumb.
    """
    label = f"{kind}:"
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
        colour = {"Info": "32", "Warning": "33", "Error": "31", "Debug": "36"}.get(kind, "0")
        label = f"\033[{colour}m{label}\033[0m"
    print(f"{label} {escape_text(text)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- I/O parts


def which_or_fail(program: str, why: str, error: Callable[[str, int], Exception] = NodeError) -> str:
    """The full path of ``program``, or ``error`` (a NodeError; jupyter_tunnel.py's own
    TunnelError) naming what needs it, with EXIT_MISSING."""
    path = shutil.which(program)
    if not path:
        raise error(f"{program} not found in PATH ({why})", EXIT_MISSING)
    return path


def run_command(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a scheduler command, its output as text (stdin closed: it must never wait for input)."""
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


def private_log_dir() -> str:
    """The logs' directory (build_log_dir), made if need be; a real directory of the user's,
    made 0700 (a link or another user's is refused: the logs hold the server's token)."""
    path = build_log_dir(dict(os.environ), os.path.expanduser("~"))
    try:
        try:
            os.makedirs(path, 0o700, exist_ok=True)
        except FileExistsError:
            pass  # not a directory: told below
        info = os.lstat(path)
    except OSError as error:
        raise NodeError(f"cannot make the log directory {path}: {error.strerror}; give a log file "
                        "with -l PATH") from None
    import stat

    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else \
            "not a directory" if not stat.S_ISDIR(info.st_mode) else f"owned by uid {info.st_uid}"
        raise NodeError(f"not writing the log in {path}: it is {what}; remove it, or give a log file "
                        "with -l PATH")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def read_own_logs(directory: str) -> List[Tuple[str, str, float]]:
    """(path, first LOG_HEAD bytes, mtime) of the logs in ``directory`` named as make_log
    names them: regular files of the user's only, never through a link."""
    import getpass
    import stat

    prefix = f"jupyter_nb_{getpass.getuser()}_"
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    logs = []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".log")):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # a link (ELOOP), gone meanwhile...
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                logs.append((path, os.read(fd, LOG_HEAD).decode("utf-8", "replace"), info.st_mtime))
        except OSError:
            pass
        finally:
            os.close(fd)
    return logs


def remove_ended_logs(listings: Dict[str, Sequence[JobRow]]) -> None:
    """Remove the logs of ended jobs from the logs' directory (ended_logs); best effort: one
    that cannot be removed stays, and so does all of a directory that is not the user's own."""
    import stat

    directory = build_log_dir(dict(os.environ), os.path.expanduser("~"))
    try:
        info = os.lstat(directory)
    except OSError:
        return  # none yet
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return  # make_log refuses it, and says why
    for path in ended_logs(read_own_logs(directory), listings, time.time()):
        try:
            os.unlink(path)  # a name in a directory of the user's own: a link would go, not its target
        except OSError:
            pass


def make_log(path: Optional[str]) -> str:
    """The log file, created (or made) private: mode 0600 before anything is written to it.

    Without ``path``, a new one in the logs' directory (private_log_dir), which the job on
    the node reaches too (Slurm writes its output there from the node).
    """
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as error:  # a directory not writable, say (log_path checked the rest)
            raise NodeError(f"cannot write the log {path}: {error.strerror}", EXIT_USAGE) from None
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        finally:
            os.close(fd)
        return os.path.abspath(path)
    host = socket.gethostname().split(".")[0]
    import getpass  # here, not at the top: jupyter-tunnel imports this module for its --help
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f"jupyter_nb_{getpass.getuser()}_{host}_", suffix=".log",
                                dir=private_log_dir())
    os.close(fd)  # mkstemp makes it 0600
    return name


def read_log(path: str) -> str:
    """The log's text so far ('' when it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def head_name() -> str:
    """This host's fully qualified name, as ``hostname --fqdn`` says it.

    Not socket.getfqdn(): it reverse-resolves the address and gets ``localhost`` on hosts
    whose name maps to 127.0.0.1 after ``localhost`` in /etc/hosts.
    """
    name = socket.gethostname()
    try:
        return socket.getaddrinfo(name, None, 0, 0, 0, socket.AI_CANONNAME)[0][3] or name
    except (OSError, IndexError):
        return name


def user_config() -> str:
    """The user's Jupyter config file if it exists (the original passed it with --config)."""
    directory = os.environ.get("JUPYTER_CONFIG_DIR") or os.path.expanduser("~/.jupyter")
    path = os.path.join(directory, "jupyter_notebook_config.py")
    return path if os.path.isfile(path) else ""


class Job:
    """A submitted server job, looked at through its log and, now and then, the scheduler.

    The scheduler's part is in the two subclasses: how to submit, and how to ask it.
    """

    # whether asking costs the scheduler's controller a request (then it is asked gently)
    asks_controller = False

    def __init__(self, log: str, job_id: str = "") -> None:
        self.log = log
        self.job_id = job_id
        self.verdict = None  # type: Optional[JobState]  # the scheduler's last word

    def ask_scheduler(self, info: LogInfo) -> JobState:
        """The scheduler's view: ``failed``, ``pending`` or ``running`` (with the node it knows)."""
        raise NotImplementedError

    def poll(self, ask: bool = True) -> JobState:
        """Where the job is now: the log always, the scheduler when ``ask`` (or never asked yet)."""
        info = parse_log(read_log(self.log))
        self.job_id = self.job_id or info.job_id
        if info.failure:  # the job said why it ends: no need to wait for the scheduler to notice
            return JobState("failed", info.node, detail=info.failure)
        if ask or self.verdict is None:
            self.verdict = self.ask_scheduler(info)
        if self.verdict.state in ("failed", "pending"):
            return self.verdict
        node = info.node or self.verdict.node
        if info.port:
            return JobState("ready", node, info.port)
        return JobState("running", node) if node else JobState("pending")


class SgeJob(Job):
    """A Grid Engine job, held by a ``qrsh`` that runs here in a session of its own."""

    def __init__(self, log: str, process: subprocess.Popen) -> None:
        super().__init__(log)
        self.process = process

    @classmethod
    def submit(cls, args: argparse.Namespace, script: str, log: str) -> "SgeJob":
        """Start the qrsh in the background, all its output in the log."""
        qrsh = which_or_fail("qrsh", "Grid Engine's job launcher")
        argv = build_qrsh_argv(qrsh, args.type, script, args.queue or "", args.node or "", args.resource)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                # its own session: neither Ctrl+C here nor the end of the user's ssh
                # session on the head (SIGHUP) reaches it; it stays when we exit
                start_new_session=True,
            )
        return cls(log, process)

    def ask_scheduler(self, info: LogInfo) -> JobState:
        """The qrsh is the job: while it runs, so does (or waits) the job."""
        code = self.process.poll()
        if code is not None:
            # qrsh says why it gave up on a line of its own ("error: no suitable queues")
            said = [line for line in read_log(self.log).splitlines() if line.startswith("error:")]
            return JobState("failed", info.node, detail=said[-1] if said else f"qrsh exited with code {code}")
        return JobState("running")


class SlurmJob(Job):
    """A Slurm batch job, independent of any session; ``squeue`` tells its state."""

    asks_controller = True

    def __init__(self, log: str, job_id: str, squeue: str) -> None:
        super().__init__(log, job_id)
        self.squeue = squeue

    @classmethod
    def submit(cls, args: argparse.Namespace, script: str, log: str) -> "SlurmJob":
        """``sbatch`` the script; the job id is known at once."""
        sbatch = which_or_fail("sbatch", "Slurm's batch submission")
        squeue = which_or_fail("squeue", "Slurm's queue listing")
        argv = build_sbatch_argv(sbatch, args.type, script, log, args.queue or "", args.node or "", args.resource)
        done = run_command(argv, timeout=120)
        job_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not job_id:
            with open(log, "a") as out:
                out.write(done.stdout + done.stderr)
            raise NodeError(f"sbatch could not submit the job: {one_line(done.stderr or done.stdout)}",
                            EXIT_ERROR, log_tail(done.stderr or read_log(log)))
        with open(log, "a") as out:  # appended: the job may be writing there already
            out.write(f"{MARK} submitted to slurm as job {job_id}\n")
        return cls(log, job_id, squeue)

    def ask_scheduler(self, info: LogInfo) -> JobState:
        """One ``squeue`` request: the state, the node list and the reason a job waits."""
        done = run_command([self.squeue, "-h", "-j", self.job_id, "-o", "%T|%N|%r"])
        state, nodes, reason = parse_squeue(done.stdout)
        if not state:
            state = "GONE"  # squeue forgets a finished job after MinJobAge (or says "Invalid job id")
        if state in ("GONE", "COMPLETING", *SLURM_DONE):
            return JobState("failed", info.node or nodes, detail=f"the job is {state.lower()}")
        if state != "RUNNING":
            return JobState("pending", detail=slurm_waiting(state, reason))
        return JobState("running", nodes)


class ExistingJob(Job):
    """A Jupyter job found in the queue (``--reuse``): the scheduler's listing tells its state."""

    asks_controller = True

    def __init__(self, scheduler: str, row: JobRow, log: str) -> None:
        super().__init__(log, row.job)
        self.scheduler = scheduler
        self.row = row

    def ask_scheduler(self, info: LogInfo) -> JobState:
        """The job's row in the user's listing: gone means it ended."""
        rows = [row for row in list_jobs(self.scheduler) if row.job == self.job_id]
        if not rows:
            return JobState("failed", info.node, detail="the job has ended")
        self.row = rows[0]
        return JobState(self.row.state, self.row.node, detail=self.row.reason)


JOB_CLASSES = {"sge": SgeJob, "slurm": SlurmJob}


def list_jobs(scheduler: str) -> List[JobRow]:
    """The user's pending and running jobs, with their time left."""
    import getpass

    user = getpass.getuser()
    if scheduler == "slurm":
        squeue = which_or_fail("squeue", "Slurm's queue listing")
        done = run_command([squeue, "-h", "-u", user, "-o", SQUEUE_FORMAT])
        if done.returncode != 0:
            raise NodeError(f"squeue failed: {one_line(done.stderr)}")
        return parse_squeue_jobs(done.stdout)
    qstat = which_or_fail("qstat", "Grid Engine's queue listing")
    done = run_command([qstat, "-xml", "-r", "-u", user])
    if done.returncode != 0:
        raise NodeError(f"qstat failed: {one_line(done.stderr)}")
    entries = parse_qstat_xml(done.stdout)
    # without an h_rt request of its own, a job runs under its queue's h_rt (queue_conf(5))
    limits = {}  # type: Dict[str, Optional[int]]
    qconf = shutil.which("qconf")  # without it (a client-only install) the limit is not known
    for entry in entries:
        if entry.h_rt is None and entry.queue and entry.queue not in limits and qconf:
            conf = run_command([qconf, "-sq", entry.queue])
            try:
                limits[entry.queue] = parse_qconf_h_rt(conf.stdout, entry.node) if conf.returncode == 0 else None
            except ValueError:
                limits[entry.queue] = None
    return build_sge_rows(entries, limits, time.time())


def list_all_jobs(schedulers: Sequence[str]) -> Dict[str, List[JobRow]]:
    """Each scheduler's listing of the user's jobs (list_jobs).  Of two, one that cannot be
    asked (a client installed, its controller elsewhere or gone) is a Warning that names it
    and the option that leaves it out; of one, or of both, an error."""
    if len(schedulers) == 1:
        return {schedulers[0]: list_jobs(schedulers[0])}
    listings, failures = {}, {}  # type: Dict[str, List[JobRow]], Dict[str, str]
    for scheduler in schedulers:
        try:
            listings[scheduler] = list_jobs(scheduler)
        except (NodeError, OSError, subprocess.TimeoutExpired) as error:
            failures[scheduler] = describe_failure(error)
    if not listings:
        raise NodeError("neither scheduler could be asked: " + "; ".join(
            f"{SCHEDULER_NAMES[scheduler]}: {why}" for scheduler, why in failures.items()))
    for scheduler, why in failures.items():
        other = next(iter(listings))
        say("Warning", f"{SCHEDULER_NAMES[scheduler]} could not be asked ({why}): its jobs are left out; "
                       f"--scheduler {other} asks {SCHEDULER_NAMES[other]} alone")
    return listings


def describe_failure(error: Exception) -> str:
    """A scheduler command's failure in words (a NodeError, an OSError, a timeout)."""
    if isinstance(error, subprocess.TimeoutExpired):
        return f"{os.path.basename(str(error.cmd[0]))} did not answer within {error.timeout:g} s"
    if isinstance(error, NodeError):
        return str(error)
    return describe_os_error(error)


def cancel_job(listings: Dict[str, List[JobRow]], job_id: str) -> str:
    """``qdel ID`` or ``scancel ID`` of one of the user's jobs, in the scheduler whose listing
    holds it (returned); the scheduler's words when it refuses."""
    # only a job of the user's own listing: scancel says nothing for an unknown id, and a
    # manager's qdel would cancel another user's job
    holders = [scheduler for scheduler, rows in listings.items() if any(row.job == job_id for row in rows)]
    if not holders:
        where = f" in {' or '.join(SCHEDULER_NAMES[name] for name in listings)}" if len(listings) > 1 else ""
        raise NodeError(f"no job {job_id} of yours is pending or running{where}")
    if len(holders) > 1:
        raise NodeError(f"both Grid Engine and Slurm have a job {job_id} of yours: choose with --scheduler "
                        "sge|slurm")
    scheduler = holders[0]
    program = CANCEL_COMMANDS[scheduler]
    done = run_command([which_or_fail(program, "to cancel the job"), job_id])
    if done.returncode != 0:
        raise NodeError(f"{program} {job_id} failed: {one_line(done.stderr or done.stdout)}")
    return scheduler


def find_job_logs(scheduler: str, job_ids: Sequence[str]) -> Dict[str, str]:
    """The logs of jobs an earlier jupyter-node submitted, by job id (those found here).

    Slurm knows each (the job's StdOut).  A Grid Engine job's log is written by its qrsh on
    the head that submitted it, into the logs' directory in the home every head shares: look
    there, among the user's own logs, each read once whatever the number of jobs (the newest
    log of a job id wins).
    """
    found = {}  # type: Dict[str, str]
    if not job_ids:
        return found  # no log to read: nothing runs
    if scheduler == "slurm":
        scontrol = shutil.which("scontrol")
        for job_id in job_ids if scontrol else ():
            done = run_command([scontrol, "-o", "show", "job", job_id])
            path = parse_scontrol_stdout(done.stdout) if done.returncode == 0 else ""
            if path and os.access(path, os.R_OK):
                found[job_id] = path
        return found
    logs = read_own_logs(build_log_dir(dict(os.environ), os.path.expanduser("~")))
    for path, head, _ in sorted(logs, key=lambda log: log[2], reverse=True):
        scheduler, job_id = parse_log_owner(head)
        if scheduler == "sge" and job_id in job_ids and job_id not in found:
            found[job_id] = path
    return found


def one_line(text: str) -> str:
    """A scheduler's message on one line (sbatch gives the reason first, then a summary)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or "(no message)"


def submit(args: argparse.Namespace, scheduler: str, log: str) -> Job:
    """Submit the server job; returns it at once (the job may still be queued)."""
    script = build_server_script(args.type, args.pre, args.conda_env or "", user_config())
    with open(log, "a") as out:  # whose log it is, for remove_ended_logs
        out.write(f"{MARK} submitting to {scheduler}\n")
    return JOB_CLASSES[scheduler].submit(args, script, log)


def wait_for_job(job: Job, seconds: float, wait: str = "") -> JobState:
    """Poll the job until its server is ready, it failed, or ``seconds`` have passed.

    The log is read every POLL_INTERVAL (a local file: the server's URL shows there first);
    a scheduler whose every request goes to its controller is asked with a backoff.  Each
    change of state is told at once (jupyter-tunnel --submit relays these lines), the first
    with how long the wait may be (``wait``, -w's text); nothing when the first look ends it
    (a job found ready by --reuse: nothing is waited for).
    """
    deadline = time.monotonic() + seconds
    delays = doubling_delays(SCHEDULER_POLL_FIRST, SCHEDULER_POLL_MAX)
    next_ask = time.monotonic()
    told = None  # type: Optional[Tuple[str, str]]
    while True:
        now = time.monotonic()
        ask = not job.asks_controller or now >= next_ask
        if ask:
            next_ask = now + next(delays)
        state = job.poll(ask)
        # a job found in the queue whose log is elsewhere: its node is all there is to know
        if state.state in ("ready", "failed") or (state.state == "running" and not job.log) \
                or time.monotonic() >= deadline:
            return state  # report() tells it
        # the node is no news once running: squeue's short name may become the log's FQDN
        if (state.state, state.detail) != told:
            say("Info", progress_line(job.job_id, state, "" if told else wait))
            told = (state.state, state.detail)
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def detect_schedulers() -> Tuple[bool, bool]:
    """Whether Grid Engine (``qrsh``) and Slurm (``sbatch``/``srun``) are on PATH."""
    return bool(shutil.which("qrsh")), bool(shutil.which("sbatch") or shutil.which("srun"))


def job_time_left(scheduler: str, job_id: str) -> Optional[int]:
    """The job's time left from one listing; None when unknown (a listing that fails costs nothing more)."""
    if not job_id:
        return None
    try:
        rows = [row for row in list_jobs(scheduler) if row.job == job_id]
    except (NodeError, OSError, subprocess.TimeoutExpired):
        return None
    return rows[0].time_left if rows else None


def build_again_hint(job_id: str, app: str, scheduler: str = "") -> str:
    """What to run on the head about a job that is not ready yet: wait for it again, cancel it
    (``scheduler``: the --scheduler the run was given, which those runs need too)."""
    node = f"jupyter-node --scheduler {scheduler}" if scheduler else "jupyter-node"
    last = f"{node} --cancel {job_id} cancels it" if job_id else f"{node} --jobs shows its id"
    return f"{node} --reuse -t {app} waits for it again, {last}"


def report(job: Job, state: JobState, args: argparse.Namespace, scheduler: str, name: str,
           existing: bool = False) -> int:
    """Tell the user (or, with --json, the program) what the wait found; returns the exit code.

    With --json the object is the whole answer: the program (jupyter-tunnel) tells its user
    the outcome in its own words, with its own commands; a line here would say it twice, and
    in words for someone on the head (its log's path, jupyter-node's options).
    """
    where = f"job {job.job_id}" if job.job_id else "the job"
    app = APP_OF_NAME.get(name, args.type)  # a job found by --reuse may be the other type
    seconds_left = job_time_left(scheduler, job.job_id) if state.state != "failed" else None
    if args.json:
        result = build_result(scheduler, job.job_id, name, state, job.log, seconds_left, existing)
        if state.state == "failed":
            result["log_tail"] = "\n".join(line.strip() for line in log_tail(read_log(job.log)).splitlines())
        print(json.dumps(result), flush=True)
    left = f", {format_time_left(seconds_left)} left" if seconds_left is not None else ""
    if state.state == "failed":
        return fail(args, f"Jupyter {app} did not start: {state.detail}. Log: {job.log}", EXIT_ERROR,
                    log_tail(read_log(job.log)), result_printed=True)
    if args.json:
        return EXIT_OK
    if state.state == "pending":
        say("Info", f"After {args.wait}, {where} is still pending{f' ({state.detail})' if state.detail else ''}; "
                    f"it stays in the queue: {build_again_hint(job.job_id, app, args.scheduler or '')}.")
        return EXIT_OK
    if state.state == "running" and job.log:
        say("Info", f"{where.capitalize()} is running on {state.node}{left}, but Jupyter {app} did not start "
                    f"within {args.wait} (its log: {job.log}).")
    elif state.state == "running":  # found by --reuse, its log elsewhere
        say("Info", f"{where.capitalize()} is running on {state.node}{left} (its log is not on this head: "
                    f"whether Jupyter {app} has started is not known here).")
    else:
        say("Info", f"Jupyter {app} is running on node {state.node}, port {state.port} ({where}{left}).")
    import getpass

    command = build_tunnel_command(f"{getpass.getuser()}@{head_name()}", state.node)
    say("Info", "On your computer, run (put your gateway hosts first after -s if you need them):")
    print(escape_text(command), flush=True)  # the node comes from the job's log
    if job.log:
        say("Info", f"Log (it holds the token; private): {job.log}")
    return EXIT_OK


def job_port(log: str) -> Optional[int]:
    """The port a job's server logged (None when not known): with several servers on one
    node, it tells which is the job's own."""
    port = parse_log(read_log(log)).port if log else 0
    return port if 0 < port < 65536 else None


def show_jobs(args: argparse.Namespace, listings: Dict[str, List[JobRow]]) -> int:
    """``--jobs``/``--job ID``: the user's Jupyter jobs (or that one job) of each scheduler
    asked, as a table or JSON; each job says its scheduler (JSON: ``scheduler`` of each job;
    the top one is null when two were asked)."""
    found = [(scheduler, row) for scheduler, rows in listings.items() for row in rows
             if (row.job == args.job if args.job else row.name in JOB_NAMES.values())]
    if args.json:
        jobs = []
        for scheduler in listings:
            rows = [row for which, row in found if which == scheduler]
            logs = find_job_logs(scheduler, [row.job for row in rows if row.state == "running"])
            jobs += [dict(row._asdict(), scheduler=scheduler, port=job_port(logs.get(row.job, ""))) for row in rows]
        only = list(listings)[0] if len(listings) == 1 else None
        print(json.dumps({"scheduler": only, "jobs": jobs}), flush=True)
    elif found:
        schedulers = [scheduler for scheduler, _ in found] if len(listings) > 1 else []
        print(format_jobs([row for _, row in found], schedulers), flush=True)
    else:
        what = f"job {args.job}" if args.job else "Jupyter job of yours"
        where = f" in {' or '.join(SCHEDULER_NAMES[name] for name in listings)}" if len(listings) > 1 else ""
        say("Info", f"No {what} is pending or running{where}.")
    return EXIT_OK


def start_job(args: argparse.Namespace, scheduler: str) -> Tuple[Job, str, bool]:
    """The job to wait for, its name and whether it was there already (``--reuse``)."""
    try:
        rows = list_jobs(scheduler)
    except (NodeError, OSError, subprocess.TimeoutExpired):
        if args.reuse:
            raise
        rows = None  # submitting does not need it: the logs of ended jobs stay this time
    if rows is not None:
        remove_ended_logs({scheduler: rows})
    if args.reuse:
        assert rows is not None
        row = job_to_reuse(rows, list(JOB_NAMES.values()))
        if row:
            job = ExistingJob(scheduler, row, find_job_logs(scheduler, [row.job]).get(row.job, ""))
            # its state comes next, once looked at (or, ready, in the outcome): not twice
            if args.json:  # for jupyter-tunnel --submit, whose user knows its options
                say("Info", f"Found your Jupyter job {row.job} ({row.name}): attaching to it instead of "
                            "submitting another (--new submits one).")
            else:
                say("Info", f"Found your Jupyter job {row.job} ({row.name}): using it instead of submitting another.")
            return job, row.name, True
    if not (args.pre or args.conda_env):
        which_or_fail("jupyter", "to start the server on the node; or activate an "
                                 "environment there with --conda-env or --pre")
    log = make_log(args.log)
    job = submit(args, scheduler, log)
    where = f" as job {job.job_id}" if job.job_id else ""
    say("Info", f"Jupyter {args.type} has been submitted to the queue{where}.")
    return job, JOB_NAMES[args.type], False


def add_server_options(parser: argparse.ArgumentParser, apps: Sequence[str], default: str,
                       where: str, types: str) -> None:
    """``-t/--type``, ``--conda-env`` and ``--pre``: how a server is started on ``where``.

    Shared with jupyter_tunnel.py's ``--start``, so that the two tools cannot drift apart.
    """
    parser.add_argument("-t", "--type", choices=apps, default=default,
                        help=f"server type: {types} [default: {default}]")
    parser.add_argument("--conda-env", type=line_option, metavar="NAME",
                        help=f"activate this conda environment on {where} before starting jupyter")
    parser.add_argument("--pre", type=line_option, action="append", default=[], metavar="CMD",
                        help=f"sh command to run on {where} before jupyter (e.g. 'module load "
                             "python', '. ~/venv/bin/activate'); each must succeed; repeatable, "
                             "run before --conda-env")


def line_option(text: str) -> str:
    """An argparse type: one line (no LINE_BREAKS), refused whole rather than cut.

    Shared with jupyter_tunnel.py: --pre and --conda-env go into a one-line job script and
    into messages read back line by line.
    """
    if any(char in LINE_BREAKS for char in text):
        raise argparse.ArgumentTypeError(f"must be one line (no newline): {text!r}")
    return text


def job_option(text: str) -> str:
    """An argparse type: a scheduler's job id (``4711``, ``81234_3``).

    Shared with jupyter_tunnel.py's ``--job``: the id goes on qdel/scancel's command line and
    is compared with the scheduler's ids.
    """
    if not JOB_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a job id (a letter or digit, then letters, digits, . _ -): {text!r}")
    return text


def resource_option(text: str) -> str:
    """An argparse type: a resource request, which must split like a shell's words.

    Checked now, not after the log is made: build_resource_args splits "-..." values.
    Shared with jupyter_tunnel.py's ``--submit``.
    """
    try:
        build_resource_args("sge", [text])
    except ValueError as error:  # "No closing quotation"
        raise argparse.ArgumentTypeError(f"{text!r} does not split like a shell command: "
                                         f"{str(error).lower()}") from None
    return text


def number_option(unit: str, high: float, durations: bool = False):
    """An argparse type: a number of ``unit`` (seconds, minutes), more than 0 and at most
    ``high``; with ``durations``, the sleep syntax of -w (``90s``, ``5m``, ``1.5h``) too.

    Shared with jupyter_tunnel.py and jupyter_tunnel_shutdown.py.  float() takes "nan",
    "inf" and "1e300": nan would make every deadline unreachable (a timeout that never
    fires), and huge values overflow the timers that take them.
    """

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
            if durations:
                try:
                    value = parse_duration(text)
                except ValueError:
                    pass
        if not 0 < value <= high:  # false for nan too
            raise argparse.ArgumentTypeError(f"expected {unit}, more than 0 and at most {high:g}, not {text!r}")
        return value

    return number


def int_option(low: int, high: int):
    """An argparse type: a whole number from ``low`` to ``high`` (shared as number_option is)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, not {text!r}")
        return value

    return whole_number


# --------------------------------------------------------------------------- profiles


# Named profiles, one implementation for both tools: "jupyter-tunnel NAME [options]" and
# "jupyter-node NAME [options]" put the options of the INI section [NAME] before the user's
# own, and the tool's one parser reads the whole, so the command line adds to a repeatable
# option and overrides a single one (argparse keeps the last).  A profile holds options only:
# nothing of it reaches a shell here.  The files are read in this order, the later winning key
# by key: the site's (an HPC centre's), then the user's.  See docs/profiles.md.
PROFILES_DIR = "jupyter-tunnel"
PROFILES_FILE = "profiles.ini"
SITE_PROFILES = "/etc/jupyter-tunnel/profiles.ini"  # none on Windows
# configparser gives the keys of its default section to every other: a name that no "[...]"
# line can hold (a newline) turns that off, and a section [DEFAULT] is refused by name.
NO_DEFAULT_SECTION = "\n"
REFUSED_PROFILE = "DEFAULT"
# What no profile may hold: the options that only print (their dests)
NOT_PROFILE_KEYS = ("help", "version", "profiles")
# argparse's actions by their class names (action="append"...), which argparse does not export:
# those whose option repeats, append (-r, --pre) and extend (jupyter-tunnel's -s), and count (-v)
REPEATABLE_ACTIONS = ("_AppendAction", "_ExtendAction")
COUNT_ACTION = "_CountAction"
BOOLEAN_WORDS = configparser.RawConfigParser.BOOLEAN_STATES  # yes/no, true/false, on/off, 1/0
MAX_COUNT = 9  # a counted flag's value (verbose = 2 is -v -v)


class ProfileError(Exception):
    """A profile that cannot be used; the message names the file and, where there is one, the line."""


class ProfileValue(NamedTuple):
    """One line of a key's value, and its line number."""

    line: int
    text: str


class ProfileKey(NamedTuple):
    """A key of a profile as written: its file, its line, and its values, one per line."""

    key: str
    path: str
    line: int
    values: Tuple[ProfileValue, ...]


class Profile(NamedTuple):
    """A profile: its name, its keys (in the order written, the user's replacing the site's),
    and the (file, line) of each of its [NAME] lines."""

    name: str
    keys: Dict[str, ProfileKey]
    sections: Tuple[Tuple[str, int], ...]


def join_command(argv: Sequence[str]) -> str:
    """``argv`` quoted as a shell would need it (shlex.join, which Python 3.6 lacks)."""
    return " ".join(shlex.quote(word) for word in argv)


def profile_paths(environ: Dict[str, str], home: str, windows: bool = False) -> List[Tuple[str, bool]]:
    """The profile files in the order they are read (the later wins), each with whether it is
    the site's: /etc's, then ${XDG_CONFIG_HOME:-~/.config}'s; on Windows %APPDATA%'s alone."""
    if windows:
        base = environ.get("APPDATA") or os.path.join(home, "AppData", "Roaming")
        return [(os.path.join(base, PROFILES_DIR, PROFILES_FILE), False)]
    config = environ.get("XDG_CONFIG_HOME", "")
    base = config if os.path.isabs(config) else os.path.join(home, ".config")  # a relative one is none (XDG)
    return [(SITE_PROFILES, True), (os.path.join(base, PROFILES_DIR, PROFILES_FILE), False)]


def describe_ini_error(error: configparser.Error, text: str, path: str) -> str:
    """configparser's error for an ``Error:`` line: the file, the line, what is wrong."""
    if isinstance(error, configparser.MissingSectionHeaderError):  # a ParsingError: first
        return f"{path}:{error.lineno}: a key before the first [NAME] line: {error.line.strip()!r}"
    if isinstance(error, configparser.DuplicateSectionError):
        return f"{path}:{error.lineno}: profile [{error.section}] a second time in the file"
    if isinstance(error, configparser.DuplicateOptionError):
        return f"{path}:{error.lineno}: key {error.option!r} a second time in [{error.section}]"
    if isinstance(error, configparser.ParsingError) and error.errors:
        number = error.errors[0][0]  # its text is repr()'d: take the line itself
        line = text.split("\n")[number - 1].strip() if 0 < number <= text.count("\n") + 1 else ""
        return f"{path}:{number}: neither a [NAME] line, nor a 'key = value' line, nor a comment: {line!r}"
    return f"{path}: {error}"


def locate_profile_keys(text: str, path: str, section_re) -> Dict[str, Profile]:
    """The profiles of a file that configparser has read without error, with the line of every
    key and value (configparser tells none): its rules, for the settings of parse_profiles."""
    profiles = {}  # type: Dict[str, Profile]
    keys = {}  # type: Dict[str, ProfileKey]
    key, indent = "", 0  # the key whose value continues on more indented lines
    for number, line in enumerate(text.split("\n"), 1):  # configparser splits at "\n" only
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            key = ""  # an empty line or a comment ends a value (empty_lines_in_values=False)
            continue
        level = len(line) - len(line.lstrip())
        if key and level > indent:
            keys[key] = keys[key]._replace(values=keys[key].values + (ProfileValue(number, stripped),))
            continue
        header = section_re.match(stripped)
        if header:
            keys, key = {}, ""
            profiles[header.group("header")] = Profile(header.group("header"), keys, ((path, number),))
            continue
        name, _, value = stripped.partition("=")
        key, indent = name.strip(), level
        keys[key] = ProfileKey(key, path, number, (ProfileValue(number, value.strip()),) if value.strip() else ())
    return profiles


def parse_profiles(text: str, path: str) -> Dict[str, Profile]:
    """The profiles of one INI file's ``text``; ``path`` names it in the errors."""
    config = configparser.ConfigParser(delimiters=("=",), interpolation=None, strict=True,
                                       empty_lines_in_values=False, default_section=NO_DEFAULT_SECTION)
    config.optionxform = str  # keys as written: "Host" is no key, as --Host is no option
    try:
        config.read_string(text, source=path)
    except configparser.Error as error:
        raise ProfileError(describe_ini_error(error, text, path)) from None
    profiles = locate_profile_keys(text, path, config.SECTCRE)
    for name, profile in profiles.items():
        line = profile.sections[0][1]
        if name == REFUSED_PROFILE:
            raise ProfileError(f"{path}:{line}: [{name}] is no profile (configparser would give its keys to "
                               "every profile): write the keys in each profile")
        if name.startswith("-"):
            raise ProfileError(f"{path}:{line}: [{name}]: a profile's name cannot start with '-' (it is "
                               "given as the first argument, which an option cannot be)")
    return profiles


def merge_profiles(files: Sequence[Dict[str, Profile]]) -> Dict[str, Profile]:
    """One profile per name from the files' profiles in reading order: a later file's key
    replaces an earlier one's, in its place; the earlier file's other keys stay."""
    merged = {}  # type: Dict[str, Profile]
    for profiles in files:
        for name, profile in profiles.items():
            if name in merged:
                keys = dict(merged[name].keys)
                keys.update(profile.keys)
                profile = Profile(name, keys, merged[name].sections + profile.sections)
            merged[name] = profile
    return merged


def profile_keys(parser: argparse.ArgumentParser) -> Dict[str, Optional[argparse.Action]]:
    """Every long option of ``parser`` without its dashes, the key a profile names it by, and
    its action (None: an option that only prints, which no profile may hold)."""
    keys = {}  # type: Dict[str, Optional[argparse.Action]]
    for action in parser._actions:  # argparse's own list: it has no public accessor
        refused = action.dest in NOT_PROFILE_KEYS
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:]] = None if refused else action
    return keys


def check_option_value(action: argparse.Action, text: str) -> str:
    """What ``action``'s own type and choices say against ``text`` ("" when it is good), in the
    words argparse would use after "argument -x/--xyz:"."""
    try:
        value = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as error:
        return str(error)
    except (TypeError, ValueError):
        return f"invalid {getattr(action.type, '__name__', repr(action.type))} value: {text!r}"
    if action.choices is not None and value not in action.choices:
        return f"invalid choice: {text!r} (choose from {', '.join(map(repr, action.choices))})"
    return ""


def flag_count(action: argparse.Action, text: str) -> Optional[int]:
    """How many times a flag's profile value ``text`` gives it (None: not a flag's value)."""
    state = BOOLEAN_WORDS.get(text.lower())
    if state is not None:
        return int(state)
    if type(action).__name__ == COUNT_ACTION and re.fullmatch(r"[0-9]", text):
        return int(text)
    return None


def build_key_argv(profile: str, entry: ProfileKey, action: argparse.Action) -> List[str]:
    """The options one key of profile ``profile`` stands for (``--queue=short``; ``--pre=...``
    per line; nothing for "submit = no"), each value checked by the option's own type."""
    flag, where = f"--{entry.key}", f"[{profile}] {entry.key}"
    if not entry.values:
        raise ProfileError(f"{entry.path}:{entry.line}: {where}: no value")
    if len(entry.values) > 1 and (action.nargs == 0 or type(action).__name__ not in REPEATABLE_ACTIONS):
        raise ProfileError(f"{entry.path}:{entry.values[1].line}: {where}: one value, on one line "
                           "(only a repeatable option takes one value per line)")
    if action.nargs == 0:  # a flag: store_true, count
        value = entry.values[0]
        count = flag_count(action, value.text)
        if count is None:
            number = f", or a number up to {MAX_COUNT}" if type(action).__name__ == COUNT_ACTION else ""
            raise ProfileError(f"{entry.path}:{value.line}: {where}: expected yes or no (true/false, on/off, "
                               f"1/0{number}), not {value.text!r}")
        return [flag] * count
    argv = []
    for value in entry.values:
        # "host = gw head": an option of several values (-s) takes them on one line too
        for word in value.text.split() if action.nargs in ("+", "*") else [value.text]:
            problem = check_option_value(action, word)
            if problem:
                raise ProfileError(f"{entry.path}:{value.line}: {where}: {problem}")
            # "--opt=value": a value starting with "-" stays a value, and -s takes no more words
            argv.append(f"{flag}={word}")
    return argv


def build_profile_argv(profile: Profile, parser: argparse.ArgumentParser,
                       left_out: Optional[Collection[str]] = ()) -> List[str]:
    """The command line that ``profile`` stands for, in ``parser``'s options.  A key that is no
    option of it is an error, unless it is in ``left_out``, the other tool's keys (None: every
    such key, for jupyter-node, which cannot know jupyter-tunnel's): so one profile serves both."""
    keys = profile_keys(parser)
    argv = []  # type: List[str]
    for entry in profile.keys.values():
        if entry.key not in keys:
            if left_out is None or entry.key in left_out:
                continue
            import difflib  # here: ~10 ms at every start of the tools, for a typo's hint only

            near = difflib.get_close_matches(entry.key, [key for key, action in keys.items() if action], 1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ProfileError(f"{entry.path}:{entry.line}: [{profile.name}] unknown key {entry.key!r}{hint}: the "
                               f"keys are {parser.prog}'s long options without their dashes")
        action = keys[entry.key]
        if action is None:
            raise ProfileError(f"{entry.path}:{entry.line}: [{profile.name}] {entry.key}: --{entry.key} only "
                               "prints, it cannot be in a profile")
        argv += build_key_argv(profile.name, entry, action)
    return argv


def split_profile_name(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """``PROG NAME [options]``: the profile's NAME, a first argument that is no option (None
    when there is none), and the options."""
    if argv and not argv[0].startswith("-"):
        return argv[0], list(argv[1:])
    return None, list(argv)


def unsafe_file_problem(info: os.stat_result, path: str, uid: int) -> str:
    """Why someone else than root and user ``uid`` could change the file or directory that
    ``info`` describes ("" when nobody can)."""
    if info.st_uid not in (0, uid):
        return f"{path} is owned by uid {info.st_uid}, neither root nor you"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others than its owner (mode {stat.S_IMODE(info.st_mode):04o})"
    return ""


def read_profile_file(path: str, site: bool) -> Optional[str]:
    """The text of a profile file; None when there is none, or when others than root and the
    user could change a site file (then a ``Warning:`` says so and it is skipped)."""
    try:
        with open(path, "rb") as file:
            if site:
                directory = os.path.dirname(path)
                problem = (unsafe_file_problem(os.stat(directory), directory, os.getuid())
                           or unsafe_file_problem(os.fstat(file.fileno()), path, os.getuid()))
                if problem:
                    say("Warning", f"{path} is skipped: {problem}")
                    return None
            data = file.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ProfileError(f"cannot read {path}: {describe_os_error(error)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ProfileError(f"{path}:{line}: not UTF-8 text") from None


def load_profiles(paths: Sequence[Tuple[str, bool]]) -> Tuple[Dict[str, Profile], List[str]]:
    """The profiles of the files at ``paths`` (profile_paths), and what was read, for -v."""
    files, notes = [], []
    for path, site in paths:
        text = read_profile_file(path, site)
        notes.append(f"Profiles: {path}: {'read' if text is not None else 'not read (none)'}")
        if text is not None:
            files.append(parse_profiles(text, path))
    return merge_profiles(files), notes


def format_sections(profile: Profile) -> str:
    """Where ``profile`` is written: ``FILE:LINE``, one for each file."""
    return ", ".join(f"{path}:{line}" for path, line in profile.sections)


def expand_profile(argv: Sequence[str], parser: argparse.ArgumentParser,
                   paths: Optional[Sequence[Tuple[str, bool]]] = None,
                   left_out: Optional[Collection[str]] = ()) -> Tuple[Optional[str], List[str], List[str]]:
    """``PROG NAME [options]``: the profile's name (None without one), the command line it
    stands for (the profile's options, then the user's), and ``Debug:`` notes for -v."""
    name, rest = split_profile_name(argv)
    if name is None:
        return None, rest, []
    if paths is None:
        paths = profile_paths(dict(os.environ), os.path.expanduser("~"), os.name == "nt")
    profiles, notes = load_profiles(paths)
    if name not in profiles:
        files = ", ".join(path for path, _ in reversed(paths))  # the user's first: the one to edit
        raise ProfileError(f"no profile {name} in {files} ({parser.prog} --profiles lists them)")
    argv = build_profile_argv(profiles[name], parser, left_out) + rest
    notes += [f"Profile {name}: {format_sections(profiles[name])}", f"Command line: {join_command([parser.prog, *argv])}"]
    return name, argv, notes


def without_profiles_option(argv: Sequence[str]) -> List[str]:
    """``argv`` without --profiles (or an abbreviation argparse took for it: no value can
    be a "--" word, argparse would read it as an option)."""
    return [word for word in argv if not (len(word) > 4 and "--profiles".startswith(word))]


def show_profiles(parser: argparse.ArgumentParser, name: Optional[str], argv: Sequence[str],
                  paths: Optional[Sequence[Tuple[str, bool]]] = None,
                  left_out: Optional[Collection[str]] = ()) -> int:
    """--profiles: after a profile's NAME, the command line ``argv`` on stdout (to read, or
    copy); else every profile, where it is written and what it stands for.  Returns the exit code."""
    if name is not None:
        print(join_command([parser.prog, *without_profiles_option(argv)]), flush=True)
        return EXIT_OK
    if paths is None:
        paths = profile_paths(dict(os.environ), os.path.expanduser("~"), os.name == "nt")
    try:
        profiles, _ = load_profiles(paths)
    except ProfileError as error:
        say("Error", str(error))
        return EXIT_USAGE
    if not profiles:
        say("Info", f"No profiles in {', '.join(path for path, _ in reversed(paths))}.")
        return EXIT_OK
    code = EXIT_OK
    keys = profile_keys(parser)
    for profile_name in sorted(profiles):
        profile = profiles[profile_name]
        try:
            command = join_command([parser.prog, *build_profile_argv(profile, parser, left_out)])
        except ProfileError as error:
            say("Error", str(error))
            code = EXIT_USAGE
            continue
        print(f"{profile_name}  ({format_sections(profile)})\n  {command}", flush=True)
        others = [key for key in profile.keys if key not in keys]
        if others:  # the other tool's (left_out)
            print(f"  (not {parser.prog}'s, left out: {', '.join(others)})", flush=True)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the original tool's option names."""

    def duration(text: str) -> str:
        try:
            parse_duration(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    def log_path(text: str) -> str:
        # checked before anything is submitted or created: the job's output goes there
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text} is a directory: give a file name")
        parent = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(parent):
            raise argparse.ArgumentTypeError(f"no directory {parent} for the log {text}")
        return text

    parser = argparse.ArgumentParser(
        prog="jupyter-node",
        description=(f"jupyter-node {__version__}: start a Jupyter server on a node of a Grid Engine "
                     "or Slurm cluster, from the head node; then reach it from your computer with "
                     "jupyter-tunnel -s [GATEWAY ...] USER@HEAD -n NODE."),
        epilog=(
            "examples:\n"
            "  jupyter-node -t lab                        lab on any node, default queue\n"
            "  jupyter-node -q gpu.q -r h_vmem=8G -w 2m   Grid Engine queue and memory\n"
            "  jupyter-node -q gpu -r gres=gpu:1 -r time=2:00:00   Slurm partition, GPU, limit\n"
            "  jupyter-node --conda-env myenv -t lab      activate a conda env on the node first\n"
            "  jupyter-node --jobs                        your Jupyter jobs, with their time left\n"
            "  jupyter-node --reuse -t lab                the running one if there is, else a new one\n"
            "\nexit codes: 0 submitted (running or still queued), 1 the job failed, 2 bad option,\n"
            "  3 qrsh/sbatch or jupyter missing, 130 interrupted while waiting (the job stays)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--queue", metavar="NAME",
                        help="queue (Grid Engine: -l q=NAME) or partition (Slurm: --partition)")
    parser.add_argument("-n", "--node", metavar="NAME",
                        help="node to run on (Grid Engine: -l h=NAME; Slurm: --nodelist)")
    parser.add_argument("-l", "--log", type=log_path, metavar="PATH",
                        help="log file, made private (0600) [default: a new jupyter_nb_USER_HOST_XXXXXXXX.log "
                             "in ${XDG_STATE_HOME:-~/.local/state}/jupyter-node, where the logs of ended "
                             "jobs are removed]")
    parser.add_argument("-w", "--wait", type=duration, default=DEFAULT_WAIT, metavar="TIME",
                        help="wait up to TIME (sleep syntax: 15s, 2m, 1.5h) for the server to start; "
                             "0: don't check [default: %(default)s]")
    parser.add_argument("-r", "--resource", type=resource_option, action="append", default=[], metavar="REQ",
                        help="resource request, repeatable: NAME=VALUE (Grid Engine: -l h_vmem=4G; "
                             "Slurm: mem=4G -> --mem=4G); a value starting with - is passed as is "
                             '(--resource="-pe smp 4")')
    add_server_options(parser, APPS, "notebook", "the node",
                       "notebook (job name notebook) or lab (job name jp-lab)")
    parser.add_argument("--scheduler", choices=SCHEDULERS,
                        help="sge or slurm [default: the one found on PATH; with both, --jobs, --job "
                             "and --cancel ask both]")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (for programs: jupyter-tunnel --submit); "
                             "messages stay on stderr")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--jobs", action="store_true",
                       help="submit nothing: list your Jupyter jobs (names notebook, jp-lab) that are "
                            "pending or running, with their time left")
    which.add_argument("--job", type=job_option, metavar="ID",
                       help="as --jobs, for that one job whatever its name")
    which.add_argument("--reuse", action="store_true",
                       help="submit only if no Jupyter job of yours is pending or running; "
                            "else wait for that one")
    which.add_argument("--cancel", type=job_option, metavar="ID", help="cancel that job (qdel/scancel)")
    parser.add_argument("--profiles", action="store_true",
                        help="list the profiles (jupyter-node NAME [options]: the options of [NAME] in "
                             "/etc/jupyter-tunnel/profiles.ini and ~/.config/jupyter-tunnel/profiles.ini) and "
                             "exit; after NAME: print the command line it stands for and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def fail(args: argparse.Namespace, message: str, code: int, details: str = "",
         result_printed: bool = False) -> int:
    """Report a failure: one ``Error:`` line (details after it, escaped: a job's log and a
    scheduler's words), and with --json the JSON object unless ``result_printed``."""
    say("Error", message)
    if details and not args.json:
        print("\n".join(escape_text(line) for line in details.splitlines()), file=sys.stderr, flush=True)
    if args.json and not result_printed:
        print(json.dumps({"error": message, "state": "failed"}), flush=True)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:  # "jupyter-node NAME": a profile's keys that are jupyter-node's options; the tunnel's are left out
        profile, argv, _ = expand_profile(sys.argv[1:] if argv is None else argv, parser, left_out=None)
    except ProfileError as error:
        say("Error", str(error))
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if args.profiles:
        return show_profiles(parser, profile, argv, left_out=None)
    try:
        if args.cancel or args.jobs or args.job:
            # nothing is submitted, so nothing to choose: ask every scheduler there is
            listings = list_all_jobs([args.scheduler] if args.scheduler else found_schedulers(*detect_schedulers()))
            remove_ended_logs(listings)
            if not args.cancel:
                return show_jobs(args, listings)
            scheduler = cancel_job(listings, args.cancel)
            if args.json:
                print(json.dumps({"cancelled": args.cancel, "scheduler": scheduler}), flush=True)
            where = f" ({SCHEDULER_NAMES[scheduler]})" if len(listings) > 1 else ""
            say("Info", f"Cancelled job {args.cancel}{where}.")
            return EXIT_OK
        scheduler = args.scheduler or choose_scheduler(*detect_schedulers())
        job, name, existing = start_job(args, scheduler)
        seconds = parse_duration(args.wait)
        if seconds <= 0:
            if args.json:
                return report(job, job.poll(), args, scheduler, name, existing)
            say("Info", f"Not waiting (-w {args.wait}): the node and the server's URL will be in "
                        f"{job.log or 'the job log'}")
            return EXIT_OK
        try:
            state = wait_for_job(job, seconds, args.wait)
        except KeyboardInterrupt:
            where = f"job {job.job_id}" if job.job_id else "the job"
            hint = "" if args.json else \
                f": {build_again_hint(job.job_id, APP_OF_NAME.get(name, args.type), args.scheduler or '')}"
            say("Info", f"Stopped waiting; {where} stays in the queue{hint}.")
            return EXIT_INTERRUPTED
        return report(job, state, args, scheduler, name, existing)
    except KeyboardInterrupt:  # while a scheduler command runs (each may take up to 30 s)
        say("Info", "Interrupted.")
        return EXIT_INTERRUPTED
    except NodeError as error:
        return fail(args, str(error), error.code, error.details)
    except subprocess.TimeoutExpired as error:  # a scheduler command that hangs (controller down)
        return fail(args, f"{describe_failure(error)}: is the scheduler's controller up?", EXIT_ERROR)
    except OSError as error:  # the log, or a scheduler command that cannot run
        return fail(args, describe_os_error(error), EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
