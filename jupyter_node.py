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
   (report the node, the job and the ``jupyter-tunnel`` command), the job ends (``Error:``
   with the log's last lines), or the time is up (report what is known so far).

Only the standard library is used, and this file imports nothing from jupyter_tunnel.py: it
is the one file to copy onto a head node where nothing can be installed.  It runs on Python
3.6 (the ``python3`` of RHEL/Rocky 8 and CentOS 7 head nodes: no ``from __future__ import
annotations``, no dataclasses, nothing newer) and as ``python3 - ARGS < jupyter_node.py``,
which is how jupyter-tunnel --submit runs it through its ssh master.
"""

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

__version__ = "0.1.0"

# Exit codes, as jupyter_tunnel.py's where they overlap.
EXIT_OK = 0
EXIT_ERROR = 1  # the job could not be submitted, or it ended before the server was up
EXIT_USAGE = 2  # bad option (argparse)
EXIT_MISSING = 3  # qrsh/sbatch or jupyter is not on PATH
EXIT_INTERRUPTED = 130  # Ctrl+C while waiting (the job keeps running)

APPS = ("notebook", "lab")
JOB_NAMES = {"notebook": "notebook", "lab": "jp-lab"}  # the original's job names
SCHEDULERS = ("sge", "slurm")
DEFAULT_WAIT = "15s"
# sleep(1) syntax, as the original checked it: a number and an optional unit
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The marker line the job prints first on the node (see build_server_script).
MARK = "::jupyter-node::"
MARK_RE = re.compile(re.escape(MARK) + r" job (\S*) node (\S+)")
# Jupyter logs "http://NODE:PORT/lab?token=..." once it listens: the sign it is ready.
URL_RE = re.compile(r"\bhttps?://(?:\[[^\]\s]+\]|[^\s/:\[]+):(\d+)/")
POLL_INTERVAL = 0.2  # seconds between two reads of the log
# Seconds between two questions to a scheduler's controller (squeue): every request costs
# it, and a job waiting in the queue may wait for hours.
SCHEDULER_POLL_FIRST = 0.5
SCHEDULER_POLL_MAX = 10.0
LOG_TAIL = 15  # lines of the log shown with an error
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


class JobState(NamedTuple):
    """One look at the job: ``pending``, ``running``, ``ready`` or ``failed``."""

    state: str
    node: str = ""
    port: int = 0
    detail: str = ""


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
        # shell; `conda shell.posix activate` prints the same settings for any POSIX sh
        activate.append(f'eval "$(conda shell.posix activate {shlex.quote(conda_env)})"')
    return activate


def build_server_script(app: str, pre: Sequence[str] = (), conda_env: str = "",
                        config: str = "") -> str:
    """The ``sh`` script the job runs on the node (one line: qrsh joins it into a command line).

    The marker comes first, so the node and job are known even if the server fails.  The
    activation commands run in order (``--pre`` first: it may be ``module load conda``),
    each must succeed, and ``exec`` makes the server the job's own process, so that ``qdel``
    or ``scancel`` stops it.
    """
    steps = [
        f'echo "{MARK} job ${{JOB_ID:-${{SLURM_JOB_ID:-}}}} node $(hostname --fqdn)"',
    ]
    activate = build_activation(pre, conda_env)
    server = f'exec jupyter {app} --no-browser "--ip=$(hostname --fqdn)"'
    if config:
        server += f" {shlex.quote('--config=' + config)}"
    run = " && ".join([*(f"{{ {cmd}; }}" if ";" in cmd else cmd for cmd in activate), server])
    return "; ".join([*steps, run])


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
    return LogInfo(marker.group(1), marker.group(2), int(url.group(1)) if url else 0)


def parse_squeue(output: str) -> Tuple[str, str, str]:
    """(state, node list, reason) from ``squeue -h -o '%T|%N|%r'``; empty strings once the job is gone."""
    fields = [field.strip() for field in output.strip().split("|")]
    fields += [""] * (3 - len(fields))
    reason = "" if fields[2] in ("None", "(null)") else fields[2]
    return fields[0], fields[1], reason


def choose_scheduler(have_sge: bool, have_slurm: bool) -> str:
    """The scheduler to use when ``--scheduler`` is not given."""
    if have_sge and not have_slurm:
        return "sge"
    if have_slurm and not have_sge:
        return "slurm"
    found = "both Grid Engine (qrsh) and Slurm (sbatch)" if have_sge else "neither qrsh nor sbatch/srun"
    raise NodeError(f"found {found} on PATH: choose with --scheduler sge|slurm", EXIT_MISSING)


def build_tunnel_command(head: str, node: str) -> str:
    """The command to run on your computer to reach the server."""
    return f"jupyter-tunnel -s {shlex.quote(head)} -n {shlex.quote(node)}"


def scheduler_delays(first: float = SCHEDULER_POLL_FIRST, cap: float = SCHEDULER_POLL_MAX) -> Iterator[float]:
    """Waits between two questions to the scheduler: ``first``, doubled each time, capped at ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def log_tail(text: str, lines: int = LOG_TAIL) -> str:
    """The last lines of the log, indented, for an error message."""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in kept) if kept else "    (the log is empty)"


# --------------------------------------------------------------------------- messages


def say(kind: str, text: str) -> None:
    """``Info:``/``Warning:``/``Error:`` lines on stderr, coloured on a terminal (as jupyter_tunnel's)."""
    label = f"{kind}:"
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
        label = f"\033[{ {'Info': '32', 'Warning': '33', 'Error': '31'}.get(kind, '0') }m{label}\033[0m"
    print(f"{label} {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- I/O parts


def which_or_fail(program: str, why: str) -> str:
    """The full path of ``program``, or a NodeError naming what needs it."""
    path = shutil.which(program)
    if not path:
        raise NodeError(f"{program} not found in PATH ({why})", EXIT_MISSING)
    return path


def make_log(path: Optional[str]) -> str:
    """The log file, created (or made) private: mode 0600 before anything is written to it."""
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

    fd, name = tempfile.mkstemp(prefix=f"jupyter_nb_{getpass.getuser()}_{host}_", suffix=".log")
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
            return JobState("failed", info.node, detail=f"qrsh exited with code {code}")
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
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)
        job_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not job_id:
            with open(log, "a") as out:
                out.write(done.stdout + done.stderr)
            raise NodeError(f"sbatch could not submit the job (exit {done.returncode}); log: {log}",
                            EXIT_ERROR, log_tail(done.stderr or read_log(log)))
        return cls(log, job_id, squeue)

    def ask_scheduler(self, info: LogInfo) -> JobState:
        """One ``squeue`` request: the state, the node list and the reason a job waits."""
        done = subprocess.run([self.squeue, "-h", "-j", self.job_id, "-o", "%T|%N|%r"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=30)
        state, nodes, reason = parse_squeue(done.stdout)
        if not state:
            state = "GONE"  # squeue forgets a finished job after MinJobAge (or says "Invalid job id")
        if state in ("GONE", "COMPLETING", *SLURM_DONE):
            return JobState("failed", info.node or nodes, detail=f"the job is {state.lower()}")
        if state != "RUNNING":
            return JobState("pending", detail=f"{state.lower()}{f': {reason}' if reason else ''}")
        return JobState("running", nodes)


JOB_CLASSES = {"sge": SgeJob, "slurm": SlurmJob}


def submit(args: argparse.Namespace, scheduler: str, log: str) -> Job:
    """Submit the server job; returns it at once (the job may still be queued)."""
    script = build_server_script(args.type, args.pre, args.conda_env or "", user_config())
    return JOB_CLASSES[scheduler].submit(args, script, log)


def wait_for_job(job: Job, seconds: float) -> JobState:
    """Poll the job until its server is ready, it failed, or ``seconds`` have passed.

    The log is read every POLL_INTERVAL (a local file: the server's URL shows there first);
    a scheduler whose every request goes to its controller is asked with a backoff.
    """
    deadline = time.monotonic() + seconds
    delays = scheduler_delays()
    next_ask = time.monotonic()
    while True:
        now = time.monotonic()
        ask = not job.asks_controller or now >= next_ask
        if ask:
            next_ask = now + next(delays)
        state = job.poll(ask)
        if state.state in ("ready", "failed") or time.monotonic() >= deadline:
            return state
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def detect_scheduler() -> str:
    """The scheduler found on PATH (``qrsh``: sge; ``sbatch``/``srun``: slurm)."""
    have_slurm = bool(shutil.which("sbatch") or shutil.which("srun"))
    return choose_scheduler(bool(shutil.which("qrsh")), have_slurm)


def report(job: Job, state: JobState, app: str, waited: str) -> int:
    """Tell the user what the wait found; returns the exit code."""
    where = f"job {job.job_id}" if job.job_id else "the job"
    if state.state == "failed":
        raise NodeError(f"Jupyter {app} did not start: {state.detail}. Log: {job.log}",
                        EXIT_ERROR, log_tail(read_log(job.log)))
    if state.state == "pending":
        say("Info", f"After {waited}, {where} is still waiting to start"
                    f"{f' ({state.detail})' if state.detail else ''}; the node will be written in {job.log}")
        return EXIT_OK
    if state.state == "running":
        say("Info", f"Submitted {where} is running on {state.node}; Jupyter {app} is still starting "
                    f"(see {job.log}).")
    else:
        say("Info", f"Jupyter {app} is running on node {state.node}, port {state.port} ({where}).")
    import getpass

    command = build_tunnel_command(f"{getpass.getuser()}@{head_name()}", state.node)
    say("Info", "On your computer, run (put your gateway hosts first after -s if you need them):")
    print(command, flush=True)
    say("Info", f"Log (it holds the token; private): {job.log}")
    return EXIT_OK


def add_server_options(parser: argparse.ArgumentParser, apps: Sequence[str], default: str,
                       where: str, types: str) -> None:
    """``-t/--type``, ``--conda-env`` and ``--pre``: how a server is started on ``where``.

    Shared with jupyter_tunnel.py's ``--start``, so that the two tools cannot drift apart.
    """
    parser.add_argument("-t", "--type", choices=apps, default=default,
                        help=f"server type: {types} [default: %(default)s]")
    parser.add_argument("--conda-env", metavar="NAME",
                        help=f"activate this conda environment on {where} before starting jupyter")
    parser.add_argument("--pre", action="append", default=[], metavar="CMD",
                        help=f"sh command to run on {where} before jupyter (e.g. 'module load "
                             "python', '. ~/venv/bin/activate'); each must succeed; repeatable, "
                             "run before --conda-env")


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

    def resource(text: str) -> str:
        # split now, not after the log is made: build_resource_args splits "-..." values
        try:
            build_resource_args("sge", [text])
        except ValueError as error:  # "No closing quotation"
            raise argparse.ArgumentTypeError(f"{text!r} does not split like a shell command: "
                                             f"{str(error).lower()}") from None
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
                        help="log file, made private (0600) [default: a new "
                             "jupyter_nb_USER_HOST_XXXXXXXX.log in the temp dir]")
    parser.add_argument("-w", "--wait", type=duration, default=DEFAULT_WAIT, metavar="TIME",
                        help="wait up to TIME (sleep syntax: 15s, 2m, 1.5h) for the server to start; "
                             "0: don't check [default: %(default)s]")
    parser.add_argument("-r", "--resource", type=resource, action="append", default=[], metavar="REQ",
                        help="resource request, repeatable: NAME=VALUE (Grid Engine: -l h_vmem=4G; "
                             "Slurm: mem=4G -> --mem=4G); a value starting with - is passed as is "
                             '(--resource="-pe smp 4")')
    add_server_options(parser, APPS, "notebook", "the node",
                       "notebook (job name notebook) or lab (job name jp-lab)")
    parser.add_argument("--scheduler", choices=SCHEDULERS,
                        help="sge or slurm [default: the one found on PATH]")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        scheduler = args.scheduler or detect_scheduler()
        if not (args.pre or args.conda_env):
            which_or_fail("jupyter", "to start the server on the node; or activate an "
                                     "environment there with --conda-env or --pre")
        log = make_log(args.log)
        job = submit(args, scheduler, log)
        where = f" as job {job.job_id}" if job.job_id else ""
        say("Info", f"Jupyter {args.type} has been submitted to the queue{where}.")
        seconds = parse_duration(args.wait)
        if seconds <= 0:
            say("Info", f"Not waiting (-w {args.wait}): the node and the server's URL will be in {log}")
            return EXIT_OK
        say("Info", f"Waiting up to {args.wait} for it to start...")
        try:
            state = wait_for_job(job, seconds)
        except KeyboardInterrupt:
            say("Info", f"Stopped waiting; the job keeps running. Log: {log}")
            return EXIT_INTERRUPTED
        return report(job, state, args.type, args.wait)
    except NodeError as error:
        say("Error", str(error))
        if error.details:
            print(error.details, file=sys.stderr, flush=True)
        return error.code
    except subprocess.TimeoutExpired as error:  # a scheduler command that hangs (controller down)
        say("Error", f"{os.path.basename(str(error.cmd[0]))} did not answer within {error.timeout:g} s: "
                     "is the scheduler's controller up?")
        return EXIT_ERROR
    except OSError as error:  # the log, or a scheduler command that cannot run
        say("Error", f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
