#!/usr/bin/env python3
"""Benchmark: jupyter_tunnel.py's time to ready and logins per run, against the physical limit.

The claim under test is "one login per hop, ready about as fast as one bare ssh through
the chain".  The flow:

1. Stand up the integration tests' environment (tests/realenv.py, not a copy): the
   machine-wide test lock, the test users, a real sshd on 127.0.0.1/.2/.3 (aliases gw,
   head, srv) and one real Jupyter server run by the test user jtmulti.
2. For each ``--delay-ms`` value above 0, put a delay proxy (benchmarks/delayproxy.py) in
   front of each hop, listening on the hop's own address, and write an ssh config whose
   aliases point at the proxies.  Every hop-to-hop connection of a ``-J`` chain reads
   that config too, so each link of the chain is delayed once in each direction.
3. For 1, 2 and 3 hosts (srv; gw srv; gw head srv), after one warm-up, ``--runs`` times:
   (a) ``ssh -J … true`` through the same chain: the limit;
   (b) ``jupyter-tunnel -b none`` from its start until the printed URL answers
       (``GET …/api/status`` with the token, through the tunnel), run as the installed
       command runs it (its modules imported from cached bytecode; ``--form script``:
       ``python jupyter_tunnel.py``, which Python compiles anew at every start);
   (c) SIGINT to its process group (a terminal's Ctrl+C) until it has exited and no
       process of the run is left (its ssh master, jump-host ssh, agent);
   (d) the logins sshd logged during the run.
   In the last run the tunnel first idles ``--idle`` seconds, then the RSS of the
   python process and of its ssh master is read.  The tool's own stderr lines are
   time-stamped to split (b) into phases: start-up (to "Connecting", printed right
   before the master's exec), login, discovery+forward+probe, and the final check.
   These "cold" rows are checked against the floor of a run that logs in: (b) - (a) <=
   start-up + 2 round trips through the chain (the tool's probe, the benchmark's check)
   + 30 ms.  Two more kinds of rows (``--kinds``):
   - "master already open": the user's own master (ControlMaster auto, ControlPath,
     ControlPersist in a user config, opened by ``ssh … true`` with it) is up before the
     runs, and the tool runs with that config: no login at all, (b) <= 0.5 x (a);
   - "--start, no server running" (1 hop): ``--start -t lab`` in a fresh root directory
     that no running server matches (``--stop-server`` at the end of each run), next to
     the server's own start-up (``jupyter lab`` started by hand on the remote until its
     runtime file appears, timed on the remote, in the same run): (b) <= (a) + that + 0.3 s.
   - "no master (--no-control-master)": as cold, with the run's login held by one ssh with a
     remote shell and a SOCKS port (issue 23): (b) <= 1.2 x (a) + 0.1 s, and logins = hops.
4. (e) ``jupyter_tunnel.py --help`` wall time (the import cost), with a bare
   ``python -c pass`` as the floor.
5. Print Markdown tables (medians with [min–max], the ratio (b)/(a) per row) and the
   targets met or missed, or ``--json``; stop everything started, also on Ctrl+C.

Run as root on a Debian machine, with the test venv's Python (./tests/run.sh makes it):
``/opt/jupyter-tunnel-test/bin/python benchmarks/ready.py --delay-ms 0 20``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
# realenv and helpers live in tests/ (they are the test fixtures' code)
sys.path.insert(0, str(REPO / "tests"))

import realenv  # noqa: E402
from helpers import http_get, tail  # noqa: E402

SCRIPT = REPO / "jupyter_tunnel.py"
VENV = Path(sys.prefix)  # the test venv: its jupyter is what --start starts on the "remote"
PROXY = Path(__file__).resolve().with_name("delayproxy.py")
# the hosts given to -s for each number of hops: the target is always srv (127.0.0.3)
ROUTES: Mapping[int, Tuple[str, ...]] = {1: ("srv",), 2: ("gw", "srv"), 3: ("gw", "head", "srv")}
# jtmulti is the test user that may run any number of servers (jtuser must keep exactly one)
USER = realenv.MULTI_USER

DEFAULT_RUNS = 5
DEFAULT_IDLE = 5.0  # seconds the tunnel idles before its RSS is read
# One run of the tool; far above any expected time, it only bounds a hang.  Above the tool's
# own --timeout (60 s), which bounds a --start: the tool gives up first, and cleans up.
READY_TIMEOUT = 120.0
SSH_TIMEOUT = 60.0
EXIT_TIMEOUT = 15.0  # after SIGINT; the tool's own cleanup waits at most ~5 s for ssh
GROUP_GRACE = 2.0  # after the tool's exit, for the last of its processes to go
PROXY_START_TIMEOUT = 10.0

# The kinds of rows (--kinds), and their names in the tables.
KINDS = {"cold": "cold", "shared": "master already open", "start": "--start, no server running",
         "stdio": "no master (--no-control-master)"}
LOGGING_IN = ("cold", "stdio")  # the kinds of rows whose runs log in, one login per hop

# The targets of the claim (README "Benchmark"); checked on the medians.
TARGET_SHARED_RATIO = 0.5  # master already open: (b) <= 0.5 * (a)
TARGET_STARTUP = 0.035  # seconds from exec to the master's exec
TARGET_FLOOR_SLACK = 0.030  # cold: (b) - (a) <= start-up + 2 round trips + this
TARGET_START_SLACK = 0.3  # --start: (b) <= (a) + the server's own start-up + this
TARGET_RATIO = 1.2  # (b) <= TARGET_RATIO * (a) + TARGET_SLACK
TARGET_SLACK = 0.1  # seconds: python start-up and one probe through the tunnel
TARGET_TEARDOWN = 1.0  # seconds
TARGET_HELP = 0.1  # seconds
TARGET_RSS_MB = 20.0  # the idle python process

# Prefixes of the tool's stderr lines that mark the start and end of the login phase.
CONNECTING = "Info: Connecting"
CONNECTED = "Info: Connected"
USING = "Info: Using your open connection"  # no login: start-up ends there, login is 0


class BenchmarkError(Exception):
    """A run failed in a way that makes its numbers meaningless."""


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Stats:
    """Median, min and max of some samples (seconds, or whatever was measured)."""

    median: float
    min: float
    max: float
    n: int


@dataclass
class Row:
    """Everything measured for one number of hops at one delay."""

    hops: int
    delay_ms: float
    kind: str = "cold"  # a key of KINDS
    ssh: List[float] = field(default_factory=list)  # (a) seconds per run
    ready: List[float] = field(default_factory=list)  # (b)
    teardown: List[float] = field(default_factory=list)  # (c)
    logins: List[int] = field(default_factory=list)  # (d) per tool run
    ssh_logins: List[int] = field(default_factory=list)  # per bare ssh, to show the counter is right
    # (b) split by the tool's messages: name -> seconds per run (None: message not seen)
    phases: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    rss_python_mb: Optional[float] = None
    rss_master_mb: Optional[float] = None
    server_startup: List[float] = field(default_factory=list)  # --start rows: jupyter lab by hand, seconds


@dataclass
class Result:
    """A whole benchmark: the rows, the --help timings and where it ran."""

    rows: List[Row]
    help: List[float]  # (e) seconds per `jupyter_tunnel.py --help`
    python_floor: List[float]  # seconds per `python -c pass`
    runs: int
    idle: float
    machine: Dict[str, Any]
    form: str = "installed"  # how the tool was run (--form)


PHASES = ("start-up", "login", "discover+forward+probe", "URL answers")


def summarize(samples: Sequence[Optional[float]]) -> Optional[Stats]:
    """Median, min and max of the samples that are not None; None when there are none."""
    values = [v for v in samples if v is not None]
    if not values:
        return None
    return Stats(statistics.median(values), min(values), max(values), len(values))


def format_stats(stats: Optional[Stats], scale: float = 1.0, digits: int = 3) -> str:
    """``0.412 [0.398–0.430]`` (one value alone when all samples are equal); ``–`` for none."""
    if stats is None:
        return "–"
    median, low, high = (f"{v * scale:.{digits}f}" for v in (stats.median, stats.min, stats.max))
    return median if low == high else f"{median} [{low}–{high}]"


def ratio(row: Row) -> Optional[float]:
    """(b)/(a) on the medians."""
    ready, ssh = summarize(row.ready), summarize(row.ssh)
    if ready is None or ssh is None or ssh.median <= 0:
        return None
    return ready.median / ssh.median


def phase_times(t_start: float, stderr: Sequence[Tuple[float, str]], t_url: float, t_answer: float) -> Dict[str, Optional[float]]:
    """Split one run's (b) by the time-stamped stderr lines; None where a message is missing."""
    connecting = next((t for t, line in stderr if line.startswith((CONNECTING, USING))), None)
    connected = next((t for t, line in stderr if line.startswith((CONNECTED, USING))), None)
    return {
        "start-up": None if connecting is None else connecting - t_start,
        "login": None if connecting is None or connected is None else connected - connecting,
        "discover+forward+probe": None if connected is None else t_url - connected,
        "URL answers": t_answer - t_url,
    }


def parse_rss_mb(status: str) -> Optional[float]:
    """VmRSS from the text of /proc/PID/status, in MB (10^6 bytes); None when absent."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return None


def _markdown(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def _mb(value: Optional[float]) -> str:
    """``12.3`` or ``–``."""
    return "–" if value is None else f"{value:.1f}"


def round_trip(row: Row) -> float:
    """Seconds of one round trip through the chain: the proxies delay each link by
    ``delay_ms`` each way (loopback itself adds ~0.1 ms)."""
    return 2 * row.delay_ms / 1000 * row.hops


def floor_terms(row: Row) -> Optional[Dict[str, float]]:
    """A cold row's (b) - (a) next to its floor's terms (medians, seconds); None without samples."""
    ready, ssh, startup = summarize(row.ready), summarize(row.ssh), summarize(row.phases.get("start-up", []))
    if ready is None or ssh is None or startup is None:
        return None
    allowance = startup.median + 2 * round_trip(row) + TARGET_FLOOR_SLACK
    return {"extra": ready.median - ssh.median, "startup": startup.median, "round_trips": 2 * round_trip(row),
            "allowance": allowance}


def build_table(rows: Sequence[Row]) -> str:
    """The main table: one line per (kind, delay, hops), times in seconds."""
    header = ["run", "hops", "delay/hop", "(a) ssh -J … true s", "(b) ready s", "(b)/(a)",
              "(c) teardown s", "(d) logins", "RSS python MB", "RSS ssh master MB"]
    lines = []
    for row in rows:
        r = ratio(row)
        logins = sorted(set(row.logins))
        lines.append([
            KINDS[row.kind],
            str(row.hops),
            f"{row.delay_ms:g} ms",
            format_stats(summarize(row.ssh)),
            format_stats(summarize(row.ready)),
            "–" if r is None else f"{r:.2f}",
            format_stats(summarize(row.teardown)),
            ",".join(map(str, logins)) if logins else "–",
            _mb(row.rss_python_mb),
            _mb(row.rss_master_mb),
        ])
    return _markdown(header, lines)


def build_phase_table(rows: Sequence[Row]) -> str:
    """Where (b) goes, by the tool's own messages: medians in milliseconds."""
    header = ["run", "hops", "delay/hop", *(f"{name} ms" for name in PHASES)]
    lines = [
        [KINDS[row.kind], str(row.hops), f"{row.delay_ms:g} ms",
         *(format_stats(summarize(row.phases.get(name, [])), 1000, 0) for name in PHASES)]
        for row in rows
    ]
    return _markdown(header, lines)


def build_floor_table(rows: Sequence[Row]) -> str:
    """The cold rows against the floor of a run that logs in: medians in milliseconds."""
    header = ["hops", "delay/hop", "(b)−(a) ms", "start-up ms", "2 round trips ms", "allowance ms"]
    lines = []
    for row in rows:
        terms = floor_terms(row) if row.kind == "cold" else None
        if terms is not None:
            lines.append([str(row.hops), f"{row.delay_ms:g} ms",
                          *(f"{terms[name] * 1000:.0f}" for name in ("extra", "startup", "round_trips", "allowance"))])
    return _markdown(header, lines)


def build_start_table(rows: Sequence[Row]) -> str:
    """The --start rows: ready next to a bare login plus the server's own start-up, seconds."""
    header = ["hops", "delay/hop", "(a) ssh -J … true s", "jupyter lab start-up s", "(b) ready s", "(b)−(a)−start-up s"]
    lines = []
    for row in rows:
        ready, ssh, startup = summarize(row.ready), summarize(row.ssh), summarize(row.server_startup)
        if row.kind == "start":
            extra = "–" if not (ready and ssh and startup) else f"{ready.median - ssh.median - startup.median:.3f}"
            lines.append([str(row.hops), f"{row.delay_ms:g} ms", format_stats(ssh), format_stats(startup),
                          format_stats(ready), extra])
    return _markdown(header, lines)


def check_targets(result: Result) -> List[Tuple[str, bool, str]]:
    """(target, met, detail) for each target of the claim, on the medians."""
    checks = []
    for row in result.rows:
        where = f"{row.hops} hop{'s' if row.hops > 1 else ''}, {row.delay_ms:g} ms"
        if row.kind != "cold":
            where = f"{KINDS[row.kind]}, {where}"
        ready, ssh, teardown = summarize(row.ready), summarize(row.ssh), summarize(row.teardown)
        startup = summarize(row.server_startup)
        logins = 0 if row.kind == "shared" else row.hops
        if ready and ssh and row.kind in LOGGING_IN:
            limit = TARGET_RATIO * ssh.median + TARGET_SLACK
            checks.append((f"(b) <= {TARGET_RATIO:g}*(a)+{TARGET_SLACK:g} s, {where}", ready.median <= limit,
                           f"{ready.median:.3f} s vs {limit:.3f} s"))
        terms = floor_terms(row) if row.kind == "cold" else None
        if terms is not None:
            checks.append((f"(f) (b)-(a) <= start-up + 2 round trips + {TARGET_FLOOR_SLACK * 1000:g} ms, {where}",
                           terms["extra"] <= terms["allowance"],
                           f"{terms['extra'] * 1000:.0f} ms vs {terms['allowance'] * 1000:.0f} ms"))
            checks.append((f"(f) start-up <= {TARGET_STARTUP * 1000:g} ms, {where}",
                           terms["startup"] <= TARGET_STARTUP, f"{terms['startup'] * 1000:.0f} ms"))
        if ready and ssh and row.kind == "shared":
            limit = TARGET_SHARED_RATIO * ssh.median
            checks.append((f"(b) <= {TARGET_SHARED_RATIO:g}*(a), {where}", ready.median <= limit,
                           f"{ready.median:.3f} s vs {limit:.3f} s"))
        if ready and ssh and startup and row.kind == "start":
            limit = ssh.median + startup.median + TARGET_START_SLACK
            checks.append((f"(b) <= (a) + jupyter lab start-up + {TARGET_START_SLACK:g} s, {where}",
                           ready.median <= limit, f"{ready.median:.3f} s vs {limit:.3f} s"))
        checks.append((f"(d) logins = {'0' if logins == 0 else 'hops'} on every run, {where}",
                       bool(row.logins) and all(n == logins for n in row.logins),
                       f"logins per run: {row.logins}"))
        if teardown and row.kind != "start":  # --start rows stop their server (--stop-server) too
            checks.append((f"(c) teardown <= {TARGET_TEARDOWN:g} s, {where}", teardown.max <= TARGET_TEARDOWN,
                           f"max {teardown.max:.3f} s"))
        if row.rss_python_mb is not None:
            checks.append((f"idle python RSS <= {TARGET_RSS_MB:g} MB, {where}", row.rss_python_mb <= TARGET_RSS_MB,
                           f"{row.rss_python_mb:.1f} MB"))
    help_stats = summarize(result.help)
    if help_stats:
        checks.append((f"(e) --help <= {TARGET_HELP * 1000:g} ms", help_stats.median <= TARGET_HELP,
                       f"{help_stats.median * 1000:.0f} ms"))
    return checks


def build_report(result: Result) -> str:
    """The whole Markdown report: tables, --help line, targets."""
    help_stats, floor = summarize(result.help), summarize(result.python_floor)
    m = result.machine
    parts = [
        f"Machine: {m['cpus']} × {m['cpu'] or 'CPU'}, {m['system']}, OpenSSH {m['openssh']}, Python {m['python']}; "
        f"{result.runs} runs after a warm-up; median [min–max]; the tool run as {FORMS[result.form]}.",
        "",
        build_table(result.rows),
        "",
        f"(e) `jupyter-tunnel --help`: {format_stats(help_stats, 1000, 0)} ms "
        f"(`python -c pass`: {format_stats(floor, 1000, 0)} ms). "
        f"RSS read after {result.idle:g} s idle.",
        "",
        "Where (b) goes (from the tool's time-stamped messages, ms):",
        "",
        build_phase_table(result.rows),
        "",
        "Cold rows against the floor of a run that logs in (medians, ms; allowance = start-up + "
        f"2 round trips + {TARGET_FLOOR_SLACK * 1000:g} ms; start-up: from exec to the master's exec):",
        "",
        build_floor_table(result.rows),
        "",
        "`--start` with no server running, next to a login plus jupyter lab's own start-up (by hand, "
        "on the remote, same run):",
        "",
        build_start_table(result.rows),
        "",
        "Targets:",
        "",
    ]
    parts += [f"- [{'x' if ok else ' '}] {name}: {detail}" for name, ok, detail in check_targets(result)]
    return "\n".join(parts) + "\n"


def result_to_json(result: Result) -> str:
    """The raw samples, their summaries and the target checks, for machines."""
    data = asdict(result)
    for row, raw in zip(result.rows, data["rows"]):
        raw["summary"] = {name: (asdict(s) if (s := summarize(getattr(row, name))) else None)
                          for name in ("ssh", "ready", "teardown", "server_startup")}
        raw["ratio"] = ratio(row)
    data["summary"] = {"help": asdict(s) if (s := summarize(result.help)) else None,
                       "python_floor": asdict(s) if (s := summarize(result.python_floor)) else None}
    data["targets"] = [{"target": name, "met": ok, "detail": detail} for name, ok, detail in check_targets(result)]
    return json.dumps(data, indent=2)


# --------------------------------------------------------------------------- I/O parts


def note(text: str) -> None:
    """Progress on stderr: stdout carries only the report."""
    print(f"[ready.py] {text}", file=sys.stderr, flush=True)


def machine_info() -> Dict[str, Any]:
    """What the numbers depend on."""
    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "system": f"{platform.system()} {platform.release()}",
        "openssh": openssh.split(",")[0].replace("OpenSSH_", ""),
        "python": platform.python_version(),
    }


def tool_env() -> Dict[str, str]:
    """The environment of every measured command: like the tests', no agent, no colour."""
    env = dict(os.environ, NO_COLOR="1")
    # the tool then starts (and kills) its own agent each run: the costlier path, measured
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("SSH_AGENT_PID", None)
    return env


# How the tool is run (--form).  pip and pipx install a console script that imports the
# module, whose bytecode they compiled at install; a script given to python is compiled
# anew at every start (~20 ms for jupyter_tunnel.py here), and so is every module under
# PYTHONDONTWRITEBYTECODE, which the tests' environment sets.
FORMS = {"installed": "the installed command (`jupyter-tunnel`, importing cached bytecode)",
         "script": "`python jupyter_tunnel.py` (compiled at every start)"}
LAUNCHER = """import sys
sys.path.insert(0, {directory!r})
from {module} import main
sys.exit(main())
"""


@dataclass(frozen=True)
class Tool:
    """What runs the tool (before its arguments), and in which environment."""

    argv: Tuple[str, ...]
    env: Dict[str, str]


def prepare_tool(python: str, script: Path, form: str, directory: Path) -> Tool:
    """The command of the tool in ``form`` (see FORMS); the installed form's launcher and
    bytecode cache go to ``directory``, never into the checkout."""
    env = tool_env()
    if form == "script":
        return Tool((python, str(script)), env)
    launcher = directory / "jupyter-tunnel"  # pip's name: jupyter-tunnel-shutdown finds it by it
    launcher.write_text(LAUNCHER.format(directory=str(script.resolve().parent), module=script.stem))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
    return Tool((python, str(launcher)), env)


def tool_args(kind: str, hops: int, config: Path, server: realenv.JupyterProc, root: str = "") -> List[str]:
    """The tool's arguments for one run of a row of ``kind``."""
    hosts = ["-s", *ROUTES[hops][:-1], f"{USER}@{ROUTES[hops][-1]}"]
    if kind == "start":
        # a root directory no running server has: --dir matches none, so --start starts one
        which = ["--start", "-t", "lab", "--jupyter", str(VENV / "bin" / "jupyter"), "--root-dir", root,
                 "--dir", root, "--stop-server"]
    else:
        which = ["--port", str(server.port), *(["--no-control-master"] if kind == "stdio" else [])]
    return ["-F", str(config), "-b", "none", *which, *hosts]


def open_user_master(base_config: Path, hops: int, directory: Path) -> Path:
    """The user's own config (ControlMaster auto, ControlPath, ControlPersist around
    ``base_config``) and a master opened with it to the target as ``ssh … true`` opens one;
    returns the config.  Close with close_user_masters."""
    masters = Path(tempfile.mkdtemp(prefix="cm-", dir=directory))  # short: socket paths
    config = masters / "config"
    config.write_text(f"ControlMaster auto\nControlPath {masters}/%C\nControlPersist 600\n"
                      f"Include {base_config}\n")
    *jumps, target = ROUTES[hops]
    argv = ["ssh", "-F", str(config), *(["-J", ",".join(jumps)] if jumps else []), f"{USER}@{target}", "true"]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=tool_env(), timeout=SSH_TIMEOUT)
    if done.returncode != 0:
        raise BenchmarkError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return config


def close_user_masters(config: Path) -> None:
    """Stop every master listening in the directory of a config from open_user_master."""
    for sock in config.parent.iterdir():
        if sock.is_socket():
            subprocess.run(["ssh", "-F", "none", "-S", str(sock), "-O", "exit", "x"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=SSH_TIMEOUT)
    shutil.rmtree(config.parent, ignore_errors=True)


def new_root_dir() -> str:
    """A fresh directory of the user, for one --start run's server."""
    account = realenv.user_accounts()[USER]
    root = tempfile.mkdtemp(prefix="jtb-start-", dir=account.home)
    os.chown(root, account.uid, account.gid)
    return root


def remove_root_dir(root: str) -> None:
    """Remove a directory from new_root_dir, and first stop any server still running in it.

    A run that failed half-way (no URL, an exit code, a timeout) may leave its server: it was
    started detached on the "remote", out of the run's process group.  Left, it would be one
    more server of the user in every later run and test."""
    uid = realenv.user_accounts()[USER].uid
    left = realenv.stop_leftovers(lambda: realenv.processes_in(Path(root), uid))
    if left:
        note(f"stopped processes left running in {root}: {left}")
    shutil.rmtree(root, ignore_errors=True)


# Timed on the remote, as a person would start it: from the start of jupyter lab until its
# runtime file is there; then it is stopped (and waited for: its runtime file goes too).
# A SIGTERM that comes right after the runtime file is written lands before the server's
# event loop runs: its shutdown then races the start of its extensions, and under load it
# once had not exited 120 s later.  So the wait is bounded, then SIGKILL, and the
# runtime files that SIGKILL leaves are removed.  Its output goes to a log in its root
# directory, whose end a failure shows; the stages go to stderr, so a hang says where.
SERVER_STARTUP_SCRIPT = r"""cd {root} || exit 1
t0=$(date +%s.%N)
{jupyter} lab --no-browser --ip=127.0.0.1 </dev/null >{log} 2>&1 &
pid=$!
echo "jupyter lab started (pid $pid)" >&2
f="${{XDG_DATA_HOME:-$HOME/.local/share}}/jupyter/runtime/jpserver-$pid.json"
until [ -s "$f" ]; do kill -0 $pid 2>/dev/null || {{ echo "jupyter lab exited" >&2; exit 1; }}; sleep 0.01; done
t1=$(date +%s.%N)
echo "its runtime file is written; SIGTERM" >&2
kill -TERM $pid
tries=0
while kill -0 $pid 2>/dev/null; do
  tries=$((tries + 1))
  if [ $tries -gt {stop_tries} ]; then
    echo "it did not exit within {stop_timeout:g} s of SIGTERM: SIGKILL" >&2
    kill -KILL $pid; rm -f "$f" "${{f%.json}}-open.html"; break
  fi
  sleep 0.1
done
echo "startup $t0 $t1"
"""
SERVER_STOP_TIMEOUT = 30.0  # seconds from SIGTERM to SIGKILL for the server started by hand
SERVER_LOG = "jupyter-lab.log"  # in the root directory, removed with it


def parse_startup(stdout: str) -> Optional[float]:
    """Seconds from the ``startup T0 T1`` line printed by SERVER_STARTUP_SCRIPT (and submit.py's BY_HAND); None when it is not there."""
    words = stdout.split()
    if len(words) != 3 or words[0] != "startup":
        return None
    return float(words[2]) - float(words[1])


def time_server_startup(config: Path) -> float:
    """Seconds from starting ``jupyter lab`` on the remote by hand until its runtime file appears."""
    root = new_root_dir()
    try:
        script = SERVER_STARTUP_SCRIPT.format(root=shlex.quote(root), log=SERVER_LOG,
                                              jupyter=shlex.quote(str(VENV / "bin" / "jupyter")),
                                              stop_tries=int(SERVER_STOP_TIMEOUT * 10),
                                              stop_timeout=SERVER_STOP_TIMEOUT)
        proc = subprocess.Popen(["ssh", "-F", str(config), f"{USER}@srv", "sh -s"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tool_env())
        try:
            stdout, stderr = proc.communicate(script.encode(), timeout=READY_TIMEOUT)
            why = f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            why = f"no answer within {READY_TIMEOUT:g} s"
        seconds = parse_startup(stdout.decode(errors="replace"))
        if proc.returncode != 0 or seconds is None:
            log = tail(Path(root) / SERVER_LOG, 20)
            raise BenchmarkError(f"jupyter lab started by hand on the remote failed ({why}): "
                                 f"{stderr.decode(errors='replace')}\nits log ends with:\n{log}")
        return seconds
    finally:
        remove_root_dir(root)


def start_proxies(sshd: realenv.SshServer, delay_ms: float, directory: Path,
                  stack: contextlib.ExitStack) -> Path:
    """One delay proxy per hop on the hop's own address; returns an ssh config pointing at them."""
    port = realenv.free_port(realenv.LISTEN_ADDRESSES, exclude=[sshd.port, sshd.pw_port])
    for address in realenv.LISTEN_ADDRESSES:
        proc = subprocess.Popen(
            [sys.executable, str(PROXY), address, str(port), address, str(sshd.port), f"{delay_ms:g}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, preexec_fn=realenv.die_with_parent,
        )
        stack.callback(realenv.stop_process, proc)
        assert proc.stdout is not None
        ready = _readline(proc.stdout, PROXY_START_TIMEOUT)
        if ready.strip() != "ready":
            raise BenchmarkError(f"the delay proxy on {address}:{port} did not start")
    known_hosts = directory / f"known_hosts-{port}"
    known_hosts.write_text(realenv.known_hosts_text(sshd.dir / "host_ed25519.pub", [port]))
    config = directory / f"ssh_config-delay{delay_ms:g}"
    config.write_text(realenv.ssh_config_text(sshd.dir, config, port, sshd.pw_port, known_hosts))
    return config


def _readline(stream: Any, timeout: float) -> str:
    """One line from a pipe, or "" after `timeout` s."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline().decode(errors="replace")


def time_ssh(config: Path, hops: int, sshd: realenv.SshServer) -> Tuple[float, int]:
    """(a): seconds of ``ssh -J … true`` through the chain, and the logins it made."""
    *jumps, target = ROUTES[hops]
    argv = ["ssh", "-F", str(config), *(["-J", ",".join(jumps)] if jumps else []), f"{USER}@{target}", "true"]
    offset = sshd.log_offset()
    start = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=tool_env(), timeout=SSH_TIMEOUT)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise BenchmarkError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return elapsed, len(sshd.logins_since(offset))


@dataclass
class TunnelRun:
    """One measured run of the tool."""

    ready: float
    teardown: float
    logins: int
    phases: Dict[str, Optional[float]]
    rss_python_mb: Optional[float] = None
    rss_master_mb: Optional[float] = None


def _children(pid: int) -> List[Tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(entry), cmdline))
    return found


def _rss_mb(pid: int) -> Optional[float]:
    """RSS of a live process in MB, or None."""
    try:
        return parse_rss_mb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


def _group_alive(pgid: int) -> bool:
    """Whether a live process is left in the process group.

    Zombies do not count: a jump-host ssh orphaned by its master's exit is already dead,
    and waits for PID 1 to reap it, which on some machines happens only every second or two.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def run_tool(tool: Tool, args: Sequence[str], sshd: realenv.SshServer, idle: float = 0.0) -> TunnelRun:
    """(b), (c), (d) for one run of the tool; with `idle`, also the RSS after idling that long."""
    argv = [*tool.argv, *args]
    tmp = tempfile.mkdtemp(prefix="jtb-", dir="/tmp")  # short: the tool's socket dir goes there
    offset = sshd.log_offset()
    start = time.monotonic()
    # its own session: SIGINT to the group is what a terminal's Ctrl+C does, and nothing
    # of the run can outlive it unnoticed
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(tool.env, TMPDIR=tmp), start_new_session=True, preexec_fn=realenv.die_with_parent,
    )
    stderr: List[Tuple[float, str]] = []
    try:
        url, t_url = _wait_for_url(proc, stderr, start + READY_TIMEOUT)
        parts = urllib.parse.urlsplit(url)
        token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
        try:
            status, _ = http_get(f"{parts.scheme}://{parts.netloc}{parts.path}api/status",
                                 headers={"Authorization": f"token {token}"}, timeout=10)
        except OSError as err:  # urllib's URLError, a timeout
            raise BenchmarkError(f"the printed URL did not answer: {err}\n{_text(stderr)}") from None
        t_answer = time.monotonic()
        if status != 200:
            raise BenchmarkError(f"the printed URL answered HTTP {status}")
        rss_python = rss_master = None
        if idle:
            time.sleep(idle)
            rss_python = _rss_mb(proc.pid)
            masters = [pid for pid, cmdline in _children(proc.pid)
                       if os.path.basename(cmdline.split(" ", 1)[0]) == "ssh"
                       and (" -M " in cmdline or " -D 127.0.0.1:" in cmdline)]
            rss_master = _rss_mb(masters[0]) if masters else None
        t_int = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(EXIT_TIMEOUT)
        # an exit that leaves ssh behind is not a teardown: wait for the whole group
        gone = time.monotonic() + GROUP_GRACE
        while _group_alive(proc.pid) and time.monotonic() < gone:
            time.sleep(0.002)
        teardown = time.monotonic() - t_int
        if proc.returncode != 0:
            raise BenchmarkError(f"the tool exited with {proc.returncode} after SIGINT:\n{_text(stderr)}")
        if _group_alive(proc.pid):
            raise BenchmarkError(f"processes of the run were left {GROUP_GRACE:g} s after the tool exited")
        return TunnelRun(t_answer - start, teardown, len(sshd.logins_since(offset)),
                         phase_times(start, stderr, t_url, t_answer), rss_python, rss_master)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"the tool did not exit within {EXIT_TIMEOUT:g} s of SIGINT") from None
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _text(stderr: Sequence[Tuple[float, str]]) -> str:
    """The tool's stderr lines as text."""
    return "\n".join(line for _, line in stderr)


def _wait_for_url(proc: "subprocess.Popen[bytes]", stderr: List[Tuple[float, str]], deadline: float) -> Tuple[str, float]:
    """Read the tool's stdout and stderr, time-stamping each stderr line, until the URL comes."""
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout: b"", proc.stderr: b""}
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkError(f"no URL within {READY_TIMEOUT:g} s:\n{_text(stderr)}")
            for key, _ in selector.select(left):
                stream = key.fileobj
                chunk = os.read(stream.fileno(), 65536)
                now = time.monotonic()
                if not chunk:
                    selector.unregister(stream)
                    continue
                *lines, buffers[stream] = (buffers[stream] + chunk).split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    if stream is proc.stdout:
                        if line.startswith("http"):
                            return line, now
                    else:
                        stderr.append((now, line))
    proc.wait()
    raise BenchmarkError(f"the tool exited with {proc.returncode} before printing a URL:\n{_text(stderr)}")


def time_command(argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> float:
    """Wall time of a short command, which must succeed."""
    start = time.monotonic()
    subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True,
                   env=env or tool_env())
    return time.monotonic() - start


def measure_row(kind: str, hops: int, delay_ms: float, config: Path, server: realenv.JupyterProc,
                sshd: realenv.SshServer, tool: Tool, directory: Path, args: argparse.Namespace) -> Row:
    """Warm up, then (a)-(d) `args.runs` times, alternating so that drifts hit both alike."""
    row = Row(hops, delay_ms, kind, phases={name: [] for name in PHASES})
    user_config = open_user_master(config, hops, directory) if kind == "shared" else None
    try:
        run_config = user_config or config
        time_ssh(config, hops, sshd)  # warm-up: sshd's and the page cache's first time
        if kind != "start":  # a server's start-up dwarfs any warm-up
            run_tool(tool, tool_args(kind, hops, run_config, server), sshd)
        for i in range(args.runs):
            seconds, logins = time_ssh(config, hops, sshd)
            row.ssh.append(seconds)
            row.ssh_logins.append(logins)
            root = ""
            if kind == "start":
                row.server_startup.append(time_server_startup(config))
                root = new_root_dir()
            last = i == args.runs - 1 and kind in LOGGING_IN
            try:
                run = run_tool(tool, tool_args(kind, hops, run_config, server, root), sshd,
                               idle=args.idle if last else 0.0)
            finally:
                if root:
                    remove_root_dir(root)
            row.ready.append(run.ready)
            row.teardown.append(run.teardown)
            row.logins.append(run.logins)
            for name in PHASES:
                row.phases[name].append(run.phases.get(name))
            if last:
                row.rss_python_mb, row.rss_master_mb = run.rss_python_mb, run.rss_master_mb
    finally:
        if user_config is not None:
            close_user_masters(user_config)
    return row


def measure_help(tool: Tool, python: str, runs: int) -> Tuple[List[float], List[float]]:
    """(e): `--help` wall times, and `python -c pass` as the floor, after one warm-up each."""
    help_argv = [*tool.argv, "--help"]
    floor_argv = [python, "-c", "pass"]
    time_command(help_argv, tool.env)
    time_command(floor_argv)
    runs = max(runs, 5)  # cheap, and noisier than the rest
    return [time_command(help_argv, tool.env) for _ in range(runs)], [time_command(floor_argv) for _ in range(runs)]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/ready.py",
        description="Time to ready and logins per run of jupyter_tunnel.py against `ssh -J … true`, "
                    "on a real sshd and Jupyter server (run as root, with the test venv's Python).",
    )
    parser.add_argument("--hosts", type=int, nargs="+", default=sorted(ROUTES), choices=sorted(ROUTES),
                        help="numbers of hosts (hops) to measure [default: 1 2 3]")
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0.0], metavar="MS",
                        help="one-way delay added per hop, one table row set per value [default: 0]")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                        help="kinds of rows: cold (a login), shared (the user's master already open), "
                             "start (--start with no server running, 1 hop only), stdio (--no-control-master) "
                             "[default: all]")
    parser.add_argument("--form", choices=list(FORMS), default="installed",
                        help="how the tool is run: as the installed command, or as python SCRIPT "
                             "[default: %(default)s]")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="measured runs per row [default: %(default)s]")
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE, metavar="SECONDS",
                        help="idle time before the RSS is read [default: %(default)g]")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--script", type=Path, default=SCRIPT, help="the jupyter_tunnel.py to measure [default: the checkout's]")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs it [default: this one]")
    parser.add_argument("--no-lock", action="store_true",
                        help="do not take the machine-wide test lock nor set up the test users: "
                             "the caller (a test session) has done both")
    return parser


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP: stop like Ctrl+C, so that everything started is stopped."""
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 when it ran (targets missed or not), 1 when it could not, 130 on Ctrl+C."""
    args = build_parser().parse_args(argv)
    if args.runs < 1 or args.idle < 0 or any(d < 0 for d in args.delay_ms):
        build_parser().error("--runs must be >= 1, --idle and --delay-ms >= 0")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_keyboard_interrupt)
    rows: List[Row] = []
    try:
        with realenv.environment(USER, no_lock=args.no_lock, on_wait=note) as (sshd, server, directory):
            tool = prepare_tool(args.python, args.script, args.form, directory)
            for delay in args.delay_ms:
                with contextlib.ExitStack() as proxies:
                    config = start_proxies(sshd, delay, directory, proxies) if delay > 0 else sshd.config
                    for kind in args.kinds:
                        for hops in args.hosts if kind != "start" else [1]:
                            note(f"{KINDS[kind]}: {hops} hop(s), {delay:g} ms per hop: {args.runs} runs...")
                            rows.append(measure_row(kind, hops, delay, config, server, sshd, tool, directory, args))
            note("--help...")
            help_times, floor = measure_help(tool, args.python, args.runs)
    except (realenv.SetupError, BenchmarkError, subprocess.TimeoutExpired) as err:  # the last: an ssh that hung
        note(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    result = Result(rows, help_times, floor, args.runs, args.idle, machine_info(), args.form)
    sys.stdout.write(result_to_json(result) + "\n" if args.json else build_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
