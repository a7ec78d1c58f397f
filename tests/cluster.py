"""Real clusters for the tests: Son of Grid Engine and Slurm on this machine, no mocks.

Plain functions stand each cluster up (idempotent: daemons already running and a
configuration already in place are reused) and down; tests/cluster_fixtures.py puts them
together with the session's sshd.  tests/run.sh installs the Debian packages
(``gridengine-master gridengine-exec gridengine-client``, ``slurm-wlm munge``).

Single-host clusters: the head node and the one compute node are this machine, whose
name is ``socket.gethostname()``.  What the tests then exercise is the real path:

* ``jupyter_node.py`` runs as the test user ``CLUSTER_USER`` in an ssh session on the head
  (``ssh head``, the fixtures' sshd on 127.0.0.2) and submits a real Jupyter server;
* the scheduler starts it on the node, where it listens on the node's FQDN;
* ``jupyter_tunnel.py -s head -n NODE`` logs into the head once and, from there, into the
  node with ``ssh NODE``.  The head side of that is the test user's own ``~/.ssh/config``
  (``Host NODE`` -> the fixtures' sshd port; NODE resolves to this machine's address, where
  the sshd listens) and ``~/.ssh/known_hosts``.  The user has NO key of its own: the login
  into the node works only with the client's agent, forwarded by jupyter_tunnel.py for its
  discovery session, as on a real cluster.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from helpers import alive, kill_all, pids_of, tail, wait_for
from realenv import LISTEN_ADDRESSES, SetupError, SshServer, UserAccount, run

CLUSTER_USER = "jtcluster"  # submits jobs; never has a Jupyter server outside a test
REPO = Path(__file__).resolve().parent.parent
HOSTS_MARK = "# added by jupyter-tunnel tests/cluster.py"  # on lines it adds to /etc/hosts

# --------------------------------------------------------------------------- helpers


class ClusterError(SetupError):
    """A cluster could not be set up; the message says which step and shows its output."""


def daemon_pid(pidfile: Path, comm: str) -> Optional[int]:
    """The pid in `pidfile` if that process is alive and is `comm` (not a reused pid)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if name == comm[:15] and alive(pid) else None


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM a daemon (not our child) and wait until it is gone; SIGKILL after `timeout`."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return

    try:
        wait_for(lambda: not alive(pid), timeout, interval=0.1, what=f"pid {pid} to exit")
    except AssertionError:
        os.kill(pid, 9)


def ensure_host_resolves(host: str) -> str:
    """The IPv4 address of `host`; one added to /etc/hosts (127.0.0.1) when it has none.

    The schedulers, `hostname --fqdn` in the job and the head's `ssh NODE` all need it.
    """
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except socket.gaierror:
        with open("/etc/hosts", "a") as f:
            f.write(f"127.0.0.1 {host} {HOSTS_MARK}\n")
        return "127.0.0.1"


def this_host() -> str:
    """The machine's host name: the head node and the compute node of the single-host clusters."""
    return socket.gethostname()


# --------------------------------------------------------------------------- Grid Engine

SGE_ROOT = Path("/var/lib/gridengine")
SGE_SPOOL = Path("/var/spool/gridengine")
SGE_QUEUE = "all.q"
# Debian's binaries default to these; set anyway so that a user's environment cannot differ
SGE_ENV = {"SGE_ROOT": str(SGE_ROOT), "SGE_CELL": "default"}
_PE = """pe_name smp
slots 999
user_lists NONE
xuser_lists NONE
start_proc_args NONE
stop_proc_args NONE
allocation_rule $pe_slots
control_slaves FALSE
job_is_first_task TRUE
urgency_slots min
accounting_summary FALSE
qsort_args NONE
"""


def sge_env() -> Dict[str, str]:
    """os.environ with the Grid Engine cell."""
    return {**os.environ, **SGE_ENV}


@dataclass
class SgeCluster:
    """A running single-host Grid Engine cluster: this machine is qmaster and exec host."""

    node: str  # the exec host's name, as qstat shows it (this machine's hostname)
    queue: str = SGE_QUEUE
    started: tuple = ()  # pids of the daemons this session started (stopped at the end)

    def qstat(self, *args: str) -> str:
        """Output of `qstat args...` (as root: root is an SGE manager)."""
        return run(["qstat", *args], "qstat", env=sge_env(), check=False).stdout

    def job_state(self, job_id: str) -> Optional[str]:
        """The job's state letters from `qstat -u '*'` ("r", "qw", "dr"...), or None once it is gone."""
        for line in self.qstat("-u", "*").splitlines():
            fields = line.split()
            if fields and fields[0] == job_id:
                return fields[4]
        return None

    def job_host(self, job_id: str) -> Optional[str]:
        """The exec host a running job is on (from its queue instance all.q@HOST)."""
        for line in self.qstat("-u", "*", "-s", "r").splitlines():
            fields = line.split()
            if fields and fields[0] == job_id and "@" in fields[7]:
                return fields[7].split("@", 1)[1]
        return None

    def jobs(self) -> List[str]:
        """Ids of every job in the cluster."""
        return [l.split()[0] for l in self.qstat("-u", "*").splitlines() if l.split() and l.split()[0].isdigit()]

    def qdel(self, ids: Sequence[str]) -> None:
        """`qdel -f ids...` (as root)."""
        run(["qdel", "-f", *ids], "qdel", env=sge_env(), check=False)

    def qdel_all(self) -> None:
        """Delete every job and wait until they are gone."""
        ids = self.jobs()
        if ids:
            self.qdel(ids)
            wait_for(lambda: not self.jobs(), 60, interval=0.2, what=f"jobs {ids} to go")


def _sge_fix_names(host: str, common: Path) -> None:
    """Make the qmaster accept this host: its name must match the reverse lookup of its IP.

    Here `vm` resolves to 127.0.0.1, which reverse-resolves to `localhost`; SGE then says
    "access denied (client IP resolved to host name localhost. This is not identical to
    clients host name vm)".  host_aliases makes the two names one host.
    """
    ip = ensure_host_resolves(host)
    out = run(["getent", "hosts", ip], "getent hosts", check=False).stdout.split()
    reverse = out[1] if len(out) > 1 else ""
    aliases = common / "host_aliases"
    if reverse and reverse != host:
        aliases.write_text(f"{host} {reverse}\n")
    else:
        aliases.unlink(missing_ok=True)
    (common / "act_qmaster").write_text(f"{host}\n")
    for path in (aliases, common / "act_qmaster"):
        if path.exists():
            shutil.chown(path, "sgeadmin", "sgeadmin")


def _sge_configure(host: str) -> None:
    """Queue all.q on this host with a slot per core, scheduling every second (idempotent)."""
    env = sge_env()

    def qconf(*args: str, check: bool = True) -> str:
        return run(["qconf", *args], f"qconf {args[0]}", env=env, check=check).stdout

    if SGE_QUEUE in qconf("-sql", check=False).split() and host in qconf("-sel", check=False).split():
        return
    work = Path(run(["mktemp", "-d"], "mktemp").stdout.strip())
    try:
        # the file name must be "global"; test users are >= 1000 anyway, but root may submit too
        conf = re.sub(r"(?m)^(min_uid|min_gid)\s.*$", r"\1 0", qconf("-sconf", "global"))
        (work / "global").write_text(conf)
        qconf("-Mconf", str(work / "global"))
        sconf = qconf("-ssconf")
        for key, value in (("schedule_interval", "0:0:1"), ("flush_submit_sec", "1"), ("flush_finish_sec", "1")):
            sconf = re.sub(rf"(?m)^{key}\s.*$", f"{key} {value}", sconf)
        (work / "sconf").write_text(sconf)
        qconf("-Msconf", str(work / "sconf"))
        if host not in qconf("-sh", check=False).split():
            qconf("-ah", host)
        if host not in qconf("-ss", check=False).split():
            qconf("-as", host)
        if host not in qconf("-sel", check=False).split():
            (work / "exechost").write_text(
                f"hostname {host}\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\n"
                "projects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n"
            )
            qconf("-Ae", str(work / "exechost"))
        (work / "hgrp").write_text(f"group_name @allhosts\nhostlist {host}\n")
        qconf("-Mhgrp" if "@allhosts" in qconf("-shgrpl", check=False).split() else "-Ahgrp", str(work / "hgrp"))
        if "smp" not in qconf("-spl", check=False).split():
            (work / "pe").write_text(_PE)
            qconf("-Ap", str(work / "pe"))
        if SGE_QUEUE not in qconf("-sql", check=False).split():
            # `qconf -aq` prints its template to $EDITOR; the template's pe_list names PEs
            # (make, mpi) that do not exist: use smp only
            template = run(["qconf", "-aq", SGE_QUEUE], "queue template", env={**env, "EDITOR": "/bin/cat"},
                           check=False).stdout
            for key, value in (("hostlist", "@allhosts"), ("pe_list", "smp"), ("slots", str(os.cpu_count() or 1)),
                               ("load_thresholds", "NONE")):
                template = re.sub(rf"(?m)^{key}\s.*$", f"{key} {value}", template)
            if not re.search(rf"(?m)^qname\s+{re.escape(SGE_QUEUE)}$", template):
                raise ClusterError(f"could not get the queue template:\n{template}")
            (work / "queue").write_text(template)
            qconf("-Aq", str(work / "queue"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sge_up() -> SgeCluster:
    """Stand up the single-host cluster (qmaster + execd on this machine) and return it."""
    if not shutil.which("qrsh") or not Path("/usr/sbin/sge_qmaster").exists():
        raise ClusterError("Grid Engine is not installed: ./tests/run.sh installs gridengine-*")
    host = this_host()
    common = SGE_ROOT / "default" / "common"
    if not (common / "bootstrap").exists():
        raise ClusterError(f"no {common}/bootstrap: gridengine-common was installed without "
                           "shared/gridengineconfig=true (tests/run.sh preseeds it)")
    env = sge_env()
    started = []
    _sge_fix_names(host, common)

    def qstat_ok() -> bool:
        return run(["qstat"], "qstat", env=env, check=False, timeout=15).returncode == 0

    qm_pidfile = SGE_SPOOL / "qmaster" / "qmaster.pid"
    pid = daemon_pid(qm_pidfile, "sge_qmaster")
    if pid is not None and not qstat_ok():
        stop_pid(pid)  # started before the names were fixed: it refuses this host
        pid = None
    if pid is None:
        Path("/var/run/gridengine").mkdir(exist_ok=True)
        shutil.chown("/var/run/gridengine", "sgeadmin", "sgeadmin")
        run(["/usr/sbin/sge_qmaster"], "starting sge_qmaster", env=env)  # daemonizes
        try:
            wait_for(qstat_ok, 30, interval=0.2, what="sge_qmaster to answer")
        except AssertionError as err:
            raise ClusterError(f"{err}\n{tail(SGE_SPOOL / 'qmaster' / 'messages')}") from None
        started.append(daemon_pid(qm_pidfile, "sge_qmaster"))
    _sge_configure(host)

    def execd_pid() -> Optional[int]:
        # the spool dir is named as the execd resolves itself (here: localhost)
        pids = (daemon_pid(f, "sge_execd") for f in (SGE_SPOOL / "execd").glob("*/execd.pid"))
        return next((p for p in pids if p), None)

    if execd_pid() is None:
        run(["/usr/sbin/sge_execd"], "starting sge_execd", env=env)  # daemonizes
        started.append(None)  # pid known once it wrote its file

    def queue_up() -> bool:
        full = run(["qstat", "-f", "-q", f"{SGE_QUEUE}@{host}"], "qstat -f", env=env, check=False).stdout
        unknown = run(["qstat", "-f", "-qs", "u"], "qstat -f", env=env, check=False).stdout
        return f"{SGE_QUEUE}@{host}" in full and f"{SGE_QUEUE}@" not in unknown

    try:
        wait_for(queue_up, 60, interval=0.2, what=f"{SGE_QUEUE}@{host} to be available")
    except AssertionError as err:
        raise ClusterError(f"{err}\n{run(['qstat', '-f'], 'qstat', env=env, check=False).stdout}") from None
    if None in started:
        started[started.index(None)] = execd_pid()
    return SgeCluster(node=host, started=tuple(p for p in started if p))


def sge_down(cluster: SgeCluster) -> None:
    """Delete the jobs left and stop the daemons this session started."""
    try:
        cluster.qdel_all()
    finally:
        for pid in reversed(cluster.started):  # execd first
            stop_pid(pid)


# --------------------------------------------------------------------------- Slurm

SLURM_CONF = Path("/etc/slurm/slurm.conf")
SLURM_PARTITION = "debug"
_SLURM_PIDS = {"munged": Path("/run/munge/munged.pid"), "slurmctld": Path("/run/slurm/slurmctld.pid"),
               "slurmd": Path("/run/slurm/slurmd.pid")}
_SLURM_CONF_TEXT = """\
# written by jupyter-tunnel's tests/cluster.py: single-host cluster, no systemd, no accounting
ClusterName=jt
SlurmctldHost={host}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile={ctld_pid}
SlurmdPidFile={slurmd_pid}
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups here: track processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=60
KillWait=5
# RealMemory must not exceed what slurmd detects, or the node is drained
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running single-host Slurm cluster: slurmctld and slurmd on this machine."""

    node: str  # the node's name (this machine's short host name)
    partition: str = SLURM_PARTITION
    started: tuple = ()  # pids of the daemons this session started

    def squeue(self, *args: str) -> str:
        """Output of `squeue args...`."""
        return run(["squeue", *args], "squeue", check=False).stdout

    def job_state(self, job_id: str) -> Optional[str]:
        """RUNNING, PENDING... or None once the job has left the queue."""
        return self.squeue("-h", "-j", job_id, "-o", "%T").strip() or None

    def jobs(self) -> List[str]:
        """Ids of every job in the queue."""
        return self.squeue("-h", "-o", "%i").split()

    def show_job(self, job_id: str) -> Dict[str, str]:
        """`scontrol show job` as a dict (JobName, UserId, Partition, NodeList, MinMemoryNode...)."""
        out = run(["scontrol", "-o", "show", "job", job_id], "scontrol show job", check=False).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def cancel_all(self) -> None:
        """scancel every job and wait until they are gone."""
        ids = self.jobs()
        if ids:
            run(["scancel", *ids], "scancel", check=False)
            wait_for(lambda: not self.jobs(), 60, interval=0.2, what=f"jobs {ids} to go")


def slurm_up() -> SlurmCluster:
    """Stand up single-host Slurm + munge (idempotent) and return it."""
    if not shutil.which("sbatch") or not Path("/usr/sbin/slurmctld").exists():
        raise ClusterError("Slurm is not installed: ./tests/run.sh installs slurm-wlm munge")
    host = this_host().split(".")[0]
    memory = re.search(r"RealMemory=(\d+)", run(["slurmd", "-C"], "slurmd -C").stdout)
    text = _SLURM_CONF_TEXT.format(host=host, cpus=os.cpu_count() or 1,
                                   memory=int(memory.group(1)) * 9 // 10 if memory else 1000,
                                   partition=SLURM_PARTITION, ctld_pid=_SLURM_PIDS["slurmctld"],
                                   slurmd_pid=_SLURM_PIDS["slurmd"])
    SLURM_CONF.parent.mkdir(exist_ok=True)
    if not SLURM_CONF.exists() or SLURM_CONF.read_text() != text:
        SLURM_CONF.write_text(text)
        SLURM_CONF.chmod(0o644)
        for name in ("slurmd", "slurmctld"):  # running ones must read the new file
            pid = daemon_pid(_SLURM_PIDS[name], name)
            if pid:
                stop_pid(pid)
    started = []

    if daemon_pid(_SLURM_PIDS["munged"], "munged") is None:
        Path("/run/munge").mkdir(mode=0o755, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            run(["runuser", "-u", "munge", "--", "mungekey", "-c"], "mungekey")
        run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], "starting munged")  # daemonizes

        def munge_works() -> bool:
            cred = run(["munge", "-n"], "munge", check=False)
            return cred.returncode == 0 and run(["unmunge"], "unmunge", check=False, input=cred.stdout).returncode == 0

        _wait(munge_works, 10, "munged to work", Path("/var/log/munge/munged.log"))
        started.append(daemon_pid(_SLURM_PIDS["munged"], "munged"))

    for path in ("/run/slurm", "/var/lib/slurm/slurmctld", "/var/lib/slurm/slurmd", "/var/log/slurm"):
        Path(path).mkdir(parents=True, exist_ok=True)
    for path in ("/run/slurm", "/var/lib/slurm/slurmctld", "/var/log/slurm"):
        shutil.chown(path, "slurm", "slurm")
    if daemon_pid(_SLURM_PIDS["slurmctld"], "slurmctld") is None:
        run(["/usr/sbin/slurmctld"], "starting slurmctld")
        _wait(lambda: "is UP" in run(["scontrol", "ping"], "scontrol ping", check=False).stdout, 20,
              "slurmctld to answer", Path("/var/log/slurm/slurmctld.log"))
        started.append(daemon_pid(_SLURM_PIDS["slurmctld"], "slurmctld"))
    if daemon_pid(_SLURM_PIDS["slurmd"], "slurmd") is None:
        run(["/usr/sbin/slurmd"], "starting slurmd")
        started.append(None)

    def node_idle() -> bool:
        state = run(["sinfo", "-h", "-n", host, "-o", "%t"], "sinfo", check=False).stdout.strip()
        if state.startswith(("drain", "drng", "down")):
            run(["scontrol", "update", f"nodename={host}", "state=resume"], "resume", check=False)
        return state in ("idle", "mix", "alloc", "comp")

    _wait(node_idle, 30, f"node {host} to be idle", Path("/var/log/slurm/slurmd.log"))
    if None in started:
        started[started.index(None)] = daemon_pid(_SLURM_PIDS["slurmd"], "slurmd")
    return SlurmCluster(node=host, started=tuple(p for p in started if p))


def slurm_down(cluster: SlurmCluster) -> None:
    """Cancel the jobs left and stop the daemons this session started."""
    try:
        cluster.cancel_all()
    finally:
        for pid in reversed(cluster.started):  # slurmd, slurmctld, munged
            stop_pid(pid)


def _wait(predicate, timeout: float, what: str, log: Path) -> None:
    """wait_for, failing as a ClusterError that shows the daemon's log."""
    try:
        wait_for(predicate, timeout, interval=0.1, what=what)
    except AssertionError as err:
        raise ClusterError(f"{err}\n--- {log} ---\n{tail(log)}") from None

# --------------------------------------------------------------------------- the cluster user


@dataclass(frozen=True)
class ClusterUser(UserAccount):
    """The test user who runs jupyter-node on the head node, and how the tests act as them."""

    head: str  # the head node's name, as jupyter-node prints it in the jupyter-tunnel command
    node: str  # the compute node (this machine's name in the single-host clusters)
    client_config: Path  # `ssh -F`: Host <head> -> the fixtures' sshd as head (127.0.0.2), + sshd.config
    bin_dir: Path  # jupyter-node "installed on the head node"
    venv: Path  # where jupyter comes from
    node_address: str = ""  # where `ssh NODE` on the head connects (an address the sshd listens on)

    def server_info(self, port: int, timeout: float = 30.0) -> dict:
        """The runtime file (as a dict, with its "path") of the user's server on `port`, once written."""

        def find() -> Optional[dict]:
            for path in self.runtime_files():
                try:
                    info = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # half written, or removed meanwhile
                if info.get("port") == port:
                    return {**info, "path": path}
            return None

        return wait_for(find, timeout, what=f"the runtime file of {self.name}'s server on port {port}")

    def ssh_head_argv(self, command: str, venv_on_path: bool = True) -> List[str]:
        """argv of `ssh USER@HEAD command` with jupyter-node (and the venv's jupyter) on PATH."""
        path = f"{self.bin_dir}:{self.venv}/bin" if venv_on_path else str(self.bin_dir)
        return ["ssh", "-F", str(self.client_config), f"{self.name}@{self.head}",
                f"PATH={path}:$PATH; export PATH; {command}"]

    def ssh_head(self, command: str, venv_on_path: bool = True, timeout: float = 180.0,
                 input: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        """Run `command` in an ssh session on the head node, as the user would; text output."""
        return subprocess.run(self.ssh_head_argv(command, venv_on_path),
                              stdin=subprocess.DEVNULL if input is None else None, input=input,
                              capture_output=True, text=True, timeout=timeout)

    def node_json(self, args: str, timeout: float = 180.0) -> Tuple["subprocess.CompletedProcess[str]", dict]:
        """`python3 - ARGS --json` on the head, jupyter_node.py's source on its stdin (as
        jupyter-tunnel --submit runs it: nothing installed there); the run and its one JSON object."""
        done = self.ssh_head(f"cd && python3 - {args} --json", timeout=timeout,
                             input=(REPO / "jupyter_node.py").read_text())
        lines = done.stdout.splitlines()
        assert len(lines) == 1, f"not one JSON line on stdout:\n{done.stdout}\n{done.stderr}"
        return done, json.loads(lines[0])


_HEAD_CLIENT_CONFIG = """\
# written by tests/cluster.py: the head node under the name jupyter-node prints for it.
# The Include first: after a Host line it would belong to that block.
Include {fixture_config}

Host {head}
    HostName {head_address}
    Port {port}
    IdentityFile {client_key}
    IdentitiesOnly yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no
"""

_NODE_USER_CONFIG = """\
# written by tests/cluster.py: how this user reaches the compute node from the head node.
# No IdentityFile and no key in ~/.ssh: the key comes from the agent that jupyter-tunnel
# forwards to its discovery session, as on a real cluster.
Host {node}
    Port {port}
{hostname_line}"""


def setup_cluster_user(sshd: SshServer, session_dir: Path, venv: Path, head: str, node: str,
                       head_address: str = "127.0.0.2") -> ClusterUser:
    """Create CLUSTER_USER (no Jupyter server, no key of its own) and its ssh files.

    * the client side (root, `ssh -F client_config`): `head` is the fixtures' sshd on
      `head_address`, so the jupyter-tunnel command that jupyter-node prints works as printed;
    * the head side (the user's ~/.ssh): `ssh NODE` reaches the fixtures' sshd on the node's
      own address (on its port), with the node's host key known.
    """
    try:
        entry = pwd.getpwnam(CLUSTER_USER)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/sh", CLUSTER_USER], f"creating user {CLUSTER_USER}")
        entry = pwd.getpwnam(CLUSTER_USER)
    # useradd leaves the password "!": sshd (UsePAM no) refuses even key logins then
    run(["usermod", "-p", "*", CLUSTER_USER], "unlocking the cluster user")
    # the node must be reached where the sshd listens; a Debian hostname is often 127.0.1.1
    node_address = ensure_host_resolves(node)
    hostname_line = "" if node_address in LISTEN_ADDRESSES else f"    HostName {LISTEN_ADDRESSES[0]}\n"
    user = ClusterUser(CLUSTER_USER, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), head, node,
                       session_dir / "cluster_ssh_config", session_dir / "cluster-bin", venv,
                       node_address if node_address in LISTEN_ADDRESSES else LISTEN_ADDRESSES[0])
    shutil.rmtree(user.runtime_dir, ignore_errors=True)  # servers of killed runs
    ssh_dir = user.home / ".ssh"
    shutil.rmtree(ssh_dir, ignore_errors=True)
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "config").write_text(_NODE_USER_CONFIG.format(node=node, port=sshd.port, hostname_line=hostname_line))
    host_key = " ".join((sshd.dir / "host_ed25519.pub").read_text().split()[:2])
    names = sorted({f"[{node}]:{sshd.port}", f"[{node_address}]:{sshd.port}", f"[{LISTEN_ADDRESSES[0]}]:{sshd.port}"})
    (ssh_dir / "known_hosts").write_text(f"{','.join(names)} {host_key}\n")
    for path in (ssh_dir, ssh_dir / "config", ssh_dir / "known_hosts"):
        os.chown(path, user.uid, user.gid)
        if path != ssh_dir:
            path.chmod(0o600)

    user.client_config.write_text(_HEAD_CLIENT_CONFIG.format(
        head=head, head_address=head_address, port=sshd.port, client_key=sshd.client_key,
        fixture_config=sshd.config))
    user.bin_dir.mkdir(exist_ok=True)
    user.bin_dir.chmod(0o755)
    script = user.bin_dir / "jupyter-node"
    shutil.copyfile(REPO / "jupyter_node.py", script)  # "installed on the head node"
    script.chmod(0o755)
    return user


def stop_user_jobs_and_servers(user: ClusterUser) -> None:
    """Kill what a test may have left of the user's (every process of this test-only user)."""
    kill_all(pids_of(user.uid))
    for path in user.runtime_files():
        path.unlink(missing_ok=True)
    # jupyter-node's logs (those of running jobs stay for the user, by design; not for the test
    # user), in their directory in the home, and in the temp dir where versions before kept them
    for directory in (user.home / ".local" / "state" / "jupyter-node", Path(tempfile.gettempdir())):
        for path in directory.glob(f"jupyter_nb_{user.name}_*.log"):
            if path.lstat().st_uid == user.uid:
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading results


@dataclass(frozen=True)
class NodeReport:
    """What jupyter-node told the user."""

    job_id: str
    node: str
    port: int
    log: str


_READY_RE = re.compile(r"Info: Jupyter \w+ is running on node (\S+), port (\d+) \(job ([^,\s]+)(?:, [^,)]+ left)?\)\.")
_LOG_RE = re.compile(r"^Info: Log \(it holds the token; private\): (\S+)$", re.M)


def parse_node_report(stdout: str, stderr: str) -> NodeReport:
    """The job, node, port and log from jupyter-node's messages (AssertionError if it did not say)."""
    ready = _READY_RE.search(stderr)
    log = _LOG_RE.search(stderr)
    assert ready and log, f"jupyter-node did not report a running server:\n{stderr}"
    assert stdout.startswith("jupyter-tunnel "), stdout
    return NodeReport(ready.group(3), ready.group(1), int(ready.group(2)), log.group(1))


def check_listed_reused_cancelled(user: ClusterUser, scheduler: str, job: dict, node: str, wait: float,
                                  queued: Callable[[], List[str]], gone: Callable[[], bool]) -> None:
    """After ``--json`` submitted ``job`` (ready): ``--jobs`` lists it with its time left,
    ``--reuse`` takes it and submits nothing, ``--cancel`` ends it, then neither finds it."""
    done, listed = user.node_json(f"--scheduler {scheduler} --jobs")
    assert done.returncode == 0, done.stderr
    [row] = listed["jobs"]
    assert {key: row[key] for key in ("job", "name", "state", "node", "reason")} == {
        "job": job["job"], "name": job["name"], "state": "running", "node": node, "reason": ""}
    assert 0 < row["time_left"] <= job["time_left"]  # the same clock, a little later

    done, again = user.node_json(f"--scheduler {scheduler} --reuse -t lab -w {wait:g}s")
    assert done.returncode == 0, done.stderr
    assert (again["existing"], again["job"], again["port"], again["state"]) == (True, job["job"], job["port"], "ready")
    # ready at the first look: one line, that it was found; nothing waited for (issue 22)
    assert done.stderr.splitlines() == [f"Info: Found your Jupyter job {job['job']} ({job['name']}): attaching to "
                                        "it instead of submitting another (--new submits one)."], done.stderr
    assert queued() == [job["job"]]  # nothing new submitted

    done, cancelled = user.node_json(f"--scheduler {scheduler} --cancel {job['job']}")
    assert (done.returncode, cancelled) == (0, {"cancelled": job["job"], "scheduler": scheduler}), done.stderr
    wait_for(gone, 60, interval=0.2, what="the job to end")
    done, listed = user.node_json(f"--scheduler {scheduler} --job {job['job']}")
    assert (done.returncode, listed) == (0, {"scheduler": scheduler, "jobs": []}), done.stderr
    done, refused = user.node_json(f"--scheduler {scheduler} --cancel {job['job']}")
    assert done.returncode == 1  # scancel alone would say nothing
    assert refused == {"error": f"no job {job['job']} of yours is pending or running", "state": "failed"}


_CONNECTION_RE = re.compile(r"Connection from (\S+) port (\d+) on (\S+) port \d+")
_ACCEPTED_RE = re.compile(r"Accepted (?:publickey|password) for (\S+) from (\S+) port (\d+) ")


def logins_by_target(sshd: SshServer, offset: int) -> List[tuple]:
    """(user, address logged into) for every real login in the sshd log after `offset`."""
    with open(sshd.log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", errors="replace").split("\n")[:-1]
    targets: Dict[tuple, str] = {}
    logins = []
    for line in lines:
        connection = _CONNECTION_RE.search(line)
        if connection:
            targets[(connection.group(1), connection.group(2))] = connection.group(3)
        accepted = _ACCEPTED_RE.search(line)
        if accepted:
            logins.append((accepted.group(1), targets.get((accepted.group(2), accepted.group(3)), "?")))
    return logins
