"""A cluster as real ones look: the node reachable only from the head, in network namespaces.

Three "hosts" on this machine, each a network namespace with its own address, host name
(a UTS namespace), /etc/hosts and sshd; no routing between them:

    client (default ns)          jpn-gw                jpn-head                jpn-node
    jpc0 10.251.1.1 <-> jpg0 10.251.1.2 | jpg1 10.251.2.1 <-> jph0 10.251.2.2 | jph1 10.251.3.1 <-> jpn0 10.251.3.2

The client reaches only gw, gw only head, head only node.  A Grid Engine cell of its own
(``jpnet``, spool ``/var/spool/gridengine-jpnet``) runs sge_qmaster on head and sge_execd on
node; the sshds give every session ``SGE_CELL=jpnet``, as a cluster's profile would.  Home
directories are this machine's, shared by all hosts as NFS homes are.

Plain functions (the fixtures are in cluster_fixtures.py); everything is undone by
``netns_down``/``sge_netns_down``.  The addresses are made here and route nowhere else: the
client's route to 10.251.0.0/16 is "unreachable", so nothing leaves the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cluster import SGE_ROOT, ClusterError, SgeCluster, SlurmCluster, _PE, _SLURM_CONF_TEXT, daemon_pid, stop_pid
from helpers import kill_all, tail, wait_for
from realenv import die_with_parent, run

HOSTS = ("gw", "head", "node")
NAMESPACES = {"gw": "jpn-gw", "head": "jpn-head", "node": "jpn-node"}
ADDRESSES = {"client": "10.251.1.1", "gw": "10.251.1.2", "head": "10.251.2.2", "node": "10.251.3.2"}
HEAD_TO_NODE = "10.251.3.1"  # head's address on the node's side
SUBNET = "10.251.0.0/16"
# /etc/hosts of each host: its neighbours by name, as seen from it
HOSTS_FILES = {
    "gw": "127.0.0.1 localhost\n10.251.1.2 gw\n10.251.1.1 client\n10.251.2.2 head\n",
    "head": "127.0.0.1 localhost\n10.251.2.2 head\n10.251.3.1 head\n10.251.2.1 gw\n10.251.3.2 node\n",
    "node": "127.0.0.1 localhost\n10.251.3.2 node\n10.251.3.1 head\n",
}
CELL = "jpnet"
CELL_SPOOL = Path("/var/spool/gridengine-jpnet")
SLURM_NETNS_CONF = Path("/etc/slurm/slurm-jpnet.conf")

_SSHD_CONFIG = """\
# written by tests/netns.py: the sshd of host {host}
Port 22
ListenAddress 0.0.0.0
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {authorized_keys}
StrictModes no
UsePAM no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100:30:200
LogLevel VERBOSE
# the clusters' environment for every session (a site's /etc/profile would set it)
SetEnv SGE_CELL={cell} SLURM_CONF={slurm_conf}
"""

_CLIENT_CONFIG = """\
# written by tests/netns.py: the hosts as the client (the default namespace) knows them
Host gw
    HostName {gw}
Host head
    HostName {head}
Host node
    HostName {node}
Host gw head node
    User {user}
    Port 22
    IdentityFile {client_key}
    IdentitiesOnly yes
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    ConnectTimeout 5
    LogLevel ERROR
"""


@dataclass
class NetnsHosts:
    """The three hosts: their sshd processes and logs, and the client's ssh config."""

    dir: Path
    config: Path  # ssh -F: gw/head/node, user `user`
    known_hosts: Path
    user: str
    sshd: Dict[str, "subprocess.Popen[bytes]"] = field(default_factory=dict, repr=False)

    def log(self, host: str) -> Path:
        """The sshd log of `host`."""
        return self.dir / host / "sshd.log"

    def log_offsets(self) -> Dict[str, int]:
        """Current size of every sshd log."""
        return {host: self.log(host).stat().st_size for host in HOSTS}

    def logins_since(self, offsets: Dict[str, int]) -> Dict[str, List[str]]:
        """host -> the users who logged into it since `offsets`."""
        logins = {}
        for host in HOSTS:
            with open(self.log(host), "rb") as f:
                f.seek(offsets[host])
                text = f.read().decode(errors="replace")
            logins[host] = re.findall(r"Accepted publickey for (\S+) from ", text)
        return logins

    def ssh(self, *args: str, timeout: float = 180.0) -> "subprocess.CompletedProcess[str]":
        """`ssh -F config args...` from the client, no stdin, text output."""
        return subprocess.run(["ssh", "-F", str(self.config), *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)


def in_netns(host: str, argv: Sequence[str], cell: bool = False) -> List[str]:
    """argv running `argv` on `host`: its network namespace, /etc/hosts and host name."""
    setup = f"hostname {host}" + (f" && export SGE_CELL={CELL}" if cell else "")
    return ["ip", "netns", "exec", NAMESPACES[host], "unshare", "--uts", "--",
            "/bin/sh", "-c", f'{setup} && exec "$@"', "sh", *argv]


def _delete_namespaces() -> None:
    """Remove our namespaces (killing what runs in them: deleting one does not), routes and files."""
    existing = run(["ip", "netns", "list"], "ip netns list").stdout.split()
    for host, ns in NAMESPACES.items():
        if ns in existing:
            pids = run(["ip", "netns", "pids", ns], "ip netns pids", check=False).stdout.split()
            kill_all(int(pid) for pid in pids if pid.isdigit())
            run(["ip", "netns", "delete", ns], f"deleting netns {ns}", check=False)
        shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    run(["ip", "link", "delete", "jpc0"], "deleting jpc0", check=False)  # gone with jpn-gw anyway
    run(["ip", "route", "delete", "unreachable", SUBNET], "deleting the route", check=False)


def netns_up(directory: Path, authorized_keys: Path, client_key: Path, user: str) -> NetnsHosts:
    """(Re)create the namespaces, links and addresses, and start an sshd on each host."""
    if not shutil.which("ip"):
        raise ClusterError("`ip` is missing: ./tests/run.sh installs iproute2")
    _delete_namespaces()
    for ns in NAMESPACES.values():
        run(["ip", "netns", "add", ns], f"ip netns add {ns}")
        run(["ip", "-n", ns, "link", "set", "lo", "up"], "lo up")
    gw, head, node = (NAMESPACES[h] for h in HOSTS)
    steps = [
        ["ip", "link", "add", "jpc0", "type", "veth", "peer", "name", "jpg0", "netns", gw],
        ["ip", "-n", gw, "link", "add", "jpg1", "type", "veth", "peer", "name", "jph0", "netns", head],
        ["ip", "-n", head, "link", "add", "jph1", "type", "veth", "peer", "name", "jpn0", "netns", node],
        ["ip", "addr", "add", f"{ADDRESSES['client']}/24", "dev", "jpc0"],
        ["ip", "link", "set", "jpc0", "up"],
        ["ip", "-n", gw, "addr", "add", f"{ADDRESSES['gw']}/24", "dev", "jpg0"],
        ["ip", "-n", gw, "link", "set", "jpg0", "up"],
        ["ip", "-n", gw, "addr", "add", "10.251.2.1/24", "dev", "jpg1"],
        ["ip", "-n", gw, "link", "set", "jpg1", "up"],
        ["ip", "-n", head, "addr", "add", f"{ADDRESSES['head']}/24", "dev", "jph0"],
        ["ip", "-n", head, "link", "set", "jph0", "up"],
        ["ip", "-n", head, "addr", "add", f"{HEAD_TO_NODE}/24", "dev", "jph1"],
        ["ip", "-n", head, "link", "set", "jph1", "up"],
        ["ip", "-n", node, "addr", "add", f"{ADDRESSES['node']}/24", "dev", "jpn0"],
        ["ip", "-n", node, "link", "set", "jpn0", "up"],
        # the rest of 10.251/16 must not follow the default route out of the machine
        ["ip", "route", "replace", "unreachable", SUBNET],
    ]
    for argv in steps:
        run(argv, "setting up the links")
    for host in HOSTS:
        # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts
        Path(f"/etc/netns/{NAMESPACES[host]}").mkdir(parents=True, exist_ok=True)
        Path(f"/etc/netns/{NAMESPACES[host]}/hosts").write_text(HOSTS_FILES[host])

    hosts = NetnsHosts(directory, directory / "ssh_config", directory / "known_hosts", user)
    known = []
    for host in HOSTS:
        d = directory / host
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        (d / "host_ed25519").unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"jpn-{host}", "-f", str(d / "host_ed25519")],
            "ssh-keygen")
        key = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
        known.append(f"{host},{ADDRESSES[host]} {key}")
        (d / "sshd_config").write_text(_SSHD_CONFIG.format(host=host, dir=d, authorized_keys=authorized_keys,
                                                           cell=CELL, slurm_conf=SLURM_NETNS_CONF))
        run(["/usr/sbin/sshd", "-t", "-f", str(d / "sshd_config")], "sshd -t")
        log = d / "sshd.log"
        log.write_text("")
        hosts.sshd[host] = subprocess.Popen(
            in_netns(host, ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config"), "-E", str(log)]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    hosts.known_hosts.write_text("\n".join(known) + "\n")
    hosts.config.write_text(_CLIENT_CONFIG.format(user=user, client_key=client_key, known_hosts=hosts.known_hosts,
                                                  **{h: ADDRESSES[h] for h in HOSTS}))
    try:
        for host in HOSTS:
            def listening(host: str = host) -> bool:
                if hosts.sshd[host].poll() is not None:
                    raise ClusterError(f"sshd on {host} exited:\n{tail(hosts.log(host))}")
                return "Server listening on 0.0.0.0 port 22" in hosts.log(host).read_text()

            wait_for(listening, 10, interval=0.05, what=f"sshd on {host}")
    except BaseException:
        netns_down(hosts)
        raise
    return hosts


def known_hosts_line(hosts: NetnsHosts, host: str) -> str:
    """The known_hosts line of `host` (for the user's ~/.ssh/known_hosts on the head)."""
    return next(line for line in hosts.known_hosts.read_text().splitlines() if line.startswith(f"{host},"))


def netns_down(hosts: Optional[NetnsHosts]) -> None:
    """Stop the sshds and remove the namespaces."""
    for proc in (hosts.sshd.values() if hosts else ()):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    _delete_namespaces()


# --------------------------------------------------------------------------- Grid Engine on head + node


@dataclass
class SgeNetns(SgeCluster):
    """The cell jpnet: sge_qmaster on head, sge_execd on node (job queries as SgeCluster's)."""

    node: str = "node"
    queue: str = "all.q"
    started: tuple = ()

    def qstat(self, *args: str) -> str:
        """`qstat args...` run on head."""
        return run(in_netns("head", ["qstat", *args], cell=True), "qstat", check=False).stdout

    def qdel(self, ids: Sequence[str]) -> None:
        """`qdel -f ids...` run on head."""
        run(in_netns("head", ["qdel", "-f", *ids], cell=True), "qdel", check=False)


def _in_ns(pid: Optional[int], host: str) -> bool:
    """Whether `pid` runs in `host`'s current network namespace (a re-created one is a new one)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{NAMESPACES[host]}").st_ino
    except OSError:
        return False


def _init_cell() -> None:
    """Create the cell's configuration and spool (once; kept across sessions)."""
    common = SGE_ROOT / CELL / "common"
    if (common / "bootstrap").exists() and (CELL_SPOOL / "spooldb").is_dir():
        return
    shutil.rmtree(SGE_ROOT / CELL, ignore_errors=True)
    shutil.rmtree(CELL_SPOOL, ignore_errors=True)
    for path in (SGE_ROOT / CELL, common, CELL_SPOOL, CELL_SPOOL / "qmaster", CELL_SPOOL / "qmaster" / "job_scripts",
                 CELL_SPOOL / "spooldb", CELL_SPOOL / "execd"):
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, "sgeadmin", "sgeadmin")
    bootstrap = Path("/usr/share/gridengine/default-bootstrap").read_text()
    bootstrap = bootstrap.replace("/var/spool/gridengine/spooldb", f"{CELL_SPOOL}/spooldb")
    (common / "bootstrap").write_text(bootstrap.replace("/var/spool/gridengine/qmaster", f"{CELL_SPOOL}/qmaster"))
    conf = Path("/usr/share/gridengine/default-configuration").read_text()
    conf = conf.replace("/var/spool/gridengine/execd", f"{CELL_SPOOL}/execd")
    global_conf = CELL_SPOOL / "global"
    global_conf.write_text(re.sub(r"(?m)^(min_uid|min_gid)\s.*$", r"\1 0", conf))
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "SGE_ROOT": str(SGE_ROOT), "SGE_CELL": CELL}
    lib = "/usr/lib/gridengine"
    for argv in (
        [f"{lib}/spoolinit", "berkeleydb", "libspoolb", f"{CELL_SPOOL}/spooldb", "init"],
        [f"{lib}/spooldefaults", "configuration", str(global_conf)],
        [f"{lib}/spooldefaults", "complexes", "/usr/share/gridengine/util/resources/centry"],
        [f"{lib}/spooldefaults", "usersets", "/usr/share/gridengine/util/resources/usersets"],
        [f"{lib}/spooldefaults", "managers", "sgeadmin", "root"],
    ):
        run(["runuser", "-u", "sgeadmin", "--", *argv], f"initialising cell {CELL}", env=env)
    (common / "act_qmaster").write_text("head\n")
    for path in common.iterdir():
        shutil.chown(path, "sgeadmin", "sgeadmin")


def sge_netns_up() -> SgeNetns:
    """Start (or reuse) the cell's daemons in the current namespaces; configure all.q@node."""
    qm_pidfile = CELL_SPOOL / "qmaster" / "qmaster.pid"

    def execd_pid() -> Optional[int]:
        pids = (daemon_pid(f, "sge_execd") for f in (CELL_SPOOL / "execd").glob("*/execd.pid"))
        return next((p for p in pids if p), None)

    # daemons left in namespaces deleted since are unreachable: replace them
    for pid, host in ((execd_pid(), "node"), (daemon_pid(qm_pidfile, "sge_qmaster"), "head")):
        if pid and not _in_ns(pid, host):
            stop_pid(pid)
    _init_cell()
    started = []

    def on_head(*argv: str, check: bool = True, env: Optional[Dict[str, str]] = None) -> str:
        return run(in_netns("head", argv, cell=True), f"{argv[0]} on head", check=check, env=env).stdout

    def qstat_ok() -> bool:
        return run(in_netns("head", ["qstat"], cell=True), "qstat", check=False, timeout=15).returncode == 0

    if daemon_pid(qm_pidfile, "sge_qmaster") is None:
        run(in_netns("head", ["/usr/sbin/sge_qmaster"], cell=True), "starting sge_qmaster on head")
        try:
            wait_for(qstat_ok, 30, interval=0.2, what="sge_qmaster on head")
        except AssertionError as err:
            raise ClusterError(f"{err}\n{tail(CELL_SPOOL / 'qmaster' / 'messages')}") from None
        started.append(daemon_pid(qm_pidfile, "sge_qmaster"))
    if "all.q" not in on_head("qconf", "-sql", check=False).split():
        work = CELL_SPOOL / "setup"
        work.mkdir(exist_ok=True)
        sconf = on_head("qconf", "-ssconf")
        for key, value in (("schedule_interval", "0:0:1"), ("flush_submit_sec", "1"), ("flush_finish_sec", "1")):
            sconf = re.sub(rf"(?m)^{key}\s.*$", f"{key} {value}", sconf)
        (work / "sconf").write_text(sconf)
        on_head("qconf", "-Msconf", str(work / "sconf"))
        on_head("qconf", "-as", "head")
        on_head("qconf", "-ah", "node")
        on_head("qconf", "-as", "node")
        (work / "exechost").write_text(
            "hostname node\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\n"
            "projects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n")
        on_head("qconf", "-Ae", str(work / "exechost"))
        (work / "hgrp").write_text("group_name @allhosts\nhostlist node\n")
        on_head("qconf", "-Ahgrp", str(work / "hgrp"))
        (work / "pe").write_text(_PE)
        on_head("qconf", "-Ap", str(work / "pe"))
        template = run(in_netns("head", ["qconf", "-aq", "all.q"], cell=True), "queue template", check=False,
                       env={**os.environ, "EDITOR": "/bin/cat"}).stdout
        for key, value in (("hostlist", "@allhosts"), ("pe_list", "smp"), ("slots", str(os.cpu_count() or 1)),
                           ("load_thresholds", "NONE")):
            template = re.sub(rf"(?m)^{key}\s.*$", f"{key} {value}", template)
        (work / "queue").write_text(template)
        on_head("qconf", "-Aq", str(work / "queue"))
    if execd_pid() is None:
        run(in_netns("node", ["/usr/sbin/sge_execd"], cell=True), "starting sge_execd on node")
        started.append(None)

    def queue_up() -> bool:
        full = on_head("qstat", "-f", check=False)
        return "all.q@node" in full and "all.q@" not in on_head("qstat", "-f", "-qs", "u", check=False)

    try:
        wait_for(queue_up, 60, interval=0.2, what="all.q@node to be available")
    except AssertionError as err:
        raise ClusterError(f"{err}\n{on_head('qstat', '-f', check=False)}") from None
    if None in started:
        started[started.index(None)] = execd_pid()
    return SgeNetns(started=tuple(p for p in started if p))


def sge_netns_down(cluster: SgeNetns) -> None:
    """Delete the jobs and stop the daemons started (before their namespaces go)."""
    try:
        cluster.qdel_all()
    finally:
        for pid in reversed(cluster.started):
            stop_pid(pid)


# --------------------------------------------------------------------------- Slurm on head + node

_SLURM_NETNS_PIDS = {"slurmctld": Path("/run/slurm/slurmctld-jpnet.pid"), "slurmd": Path("/run/slurm/slurmd-jpnet.pid")}


def in_netns_slurm(host: str, argv: Sequence[str]) -> List[str]:
    """argv running a Slurm program on `host` with the cluster's slurm.conf.

    Not `ip netns exec`: it remounts /sys, which hides /sys/fs/cgroup, and slurmd 22.05 then
    dies ("Unable to initialize cgroup plugin") even with task/none.  So: the network
    namespace only (nsenter), plus a UTS namespace for the host name and a mount namespace
    for the host's /etc/hosts.
    """
    ns = NAMESPACES[host]
    return ["env", f"SLURM_CONF={SLURM_NETNS_CONF}", "nsenter", f"--net=/run/netns/{ns}",
            "unshare", "--uts", "--mount", "--", "/bin/sh", "-c",
            f'mount --bind /etc/netns/{ns}/hosts /etc/hosts && hostname {host} && exec "$@"', "sh", *argv]


class SlurmNetns(SlurmCluster):
    """The Slurm cluster jpnet: slurmctld on head, slurmd on node (munged: the machine's one)."""

    def squeue(self, *args: str) -> str:
        return run(in_netns_slurm("head", ["squeue", *args]), "squeue on head", check=False).stdout

    def show_job(self, job_id: str) -> Dict[str, str]:
        out = run(in_netns_slurm("head", ["scontrol", "-o", "show", "job", job_id]), "scontrol", check=False).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def cancel_all(self) -> None:
        ids = self.jobs()
        if ids:
            run(in_netns_slurm("head", ["scancel", *ids]), "scancel", check=False)
            wait_for(lambda: not self.jobs(), 60, interval=0.2, what=f"jobs {ids} to go")


def slurm_netns_up() -> SlurmNetns:
    """Start slurmctld on head and slurmd on node (munged must run: slurm_up starts it)."""
    for name, host in (("slurmd", "node"), ("slurmctld", "head")):
        pid = daemon_pid(_SLURM_NETNS_PIDS[name], name)
        if pid and not _in_ns(pid, host):
            stop_pid(pid)  # left in a namespace deleted since
    memory = re.search(r"RealMemory=(\d+)", run(["slurmd", "-C"], "slurmd -C").stdout)
    text = _SLURM_CONF_TEXT.format(host="node", cpus=os.cpu_count() or 1,
                                   memory=int(memory.group(1)) * 9 // 10 if memory else 1000,
                                   partition="debug", ctld_pid=_SLURM_NETNS_PIDS["slurmctld"],
                                   slurmd_pid=_SLURM_NETNS_PIDS["slurmd"])
    text = text.replace("SlurmctldHost=node", "SlurmctldHost=head").replace("ClusterName=jt", "ClusterName=jpnet")
    for key in ("slurmctld", "slurmd"):
        text = text.replace(f"/var/lib/slurm/{key}\n", f"/var/lib/slurm/{key}-jpnet\n")
        text = text.replace(f"/var/log/slurm/{key}.log", f"/var/log/slurm/{key}-jpnet.log")
    if not SLURM_NETNS_CONF.exists() or SLURM_NETNS_CONF.read_text() != text:
        SLURM_NETNS_CONF.write_text(text)
        SLURM_NETNS_CONF.chmod(0o644)
        for name in ("slurmd", "slurmctld"):
            pid = daemon_pid(_SLURM_NETNS_PIDS[name], name)
            if pid:
                stop_pid(pid)
    for path in ("/run/slurm", "/var/lib/slurm/slurmctld-jpnet", "/var/lib/slurm/slurmd-jpnet", "/var/log/slurm"):
        Path(path).mkdir(parents=True, exist_ok=True)
    for path in ("/run/slurm", "/var/lib/slurm/slurmctld-jpnet", "/var/log/slurm"):
        shutil.chown(path, "slurm", "slurm")
    started = []
    log = Path("/var/log/slurm/slurmctld-jpnet.log")
    if daemon_pid(_SLURM_NETNS_PIDS["slurmctld"], "slurmctld") is None:
        run(in_netns_slurm("head", ["/usr/sbin/slurmctld"]), "starting slurmctld on head")
        try:
            wait_for(lambda: "is UP" in run(in_netns_slurm("head", ["scontrol", "ping"]), "ping", check=False).stdout,
                     20, interval=0.1, what="slurmctld on head")
        except AssertionError as err:
            raise ClusterError(f"{err}\n{tail(log)}") from None
        started.append(daemon_pid(_SLURM_NETNS_PIDS["slurmctld"], "slurmctld"))
    if daemon_pid(_SLURM_NETNS_PIDS["slurmd"], "slurmd") is None:
        run(in_netns_slurm("node", ["/usr/sbin/slurmd"]), "starting slurmd on node")
        started.append(None)

    def node_idle() -> bool:
        state = run(in_netns_slurm("head", ["sinfo", "-h", "-n", "node", "-o", "%t"]), "sinfo",
                    check=False).stdout.strip()
        if state.startswith(("drain", "drng", "down")):
            run(in_netns_slurm("head", ["scontrol", "update", "nodename=node", "state=resume"]), "resume",
                check=False)
        return state in ("idle", "mix", "alloc", "comp")

    try:
        wait_for(node_idle, 30, interval=0.1, what="node to be idle in Slurm")
    except AssertionError as err:
        raise ClusterError(f"{err}\n{tail(Path('/var/log/slurm/slurmd-jpnet.log'))}") from None
    if None in started:
        started[started.index(None)] = daemon_pid(_SLURM_NETNS_PIDS["slurmd"], "slurmd")
    return SlurmNetns(node="node", started=tuple(p for p in started if p))


def slurm_netns_down(cluster: SlurmNetns) -> None:
    """Cancel the jobs and stop the daemons started (before their namespaces go)."""
    try:
        cluster.cancel_all()
    finally:
        for pid in reversed(cluster.started):
            stop_pid(pid)
