"""jupyter_node.py on a real Grid Engine cluster, and jupyter_tunnel.py -n to its node.

The user's path, end to end: ``ssh USER@HEAD jupyter-node ...`` submits a real JupyterLab
with ``qrsh``; the job runs on the node (this machine, under its host name); the
``jupyter-tunnel -s USER@HEAD -n NODE`` command it printed is run as printed (plus the test
options ``-F``/``-b none``) and the page answers through it; Ctrl+C leaves the job running,
``qdel`` ends it.  What is checked is what a user would check: qstat, the log, the page.
Most tests use the single-host cluster; the last one a cluster as real ones look, where the
node is reachable only from the head (tests/netns.py).
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import time

import pytest

import jupyter_node as jn
import jupyter_tunnel as jt
from cluster import ClusterUser, SgeCluster, check_listed_reused_cancelled, logins_by_target, parse_node_report
from helpers import tcp_open, wait_for
from jupyter_node import parse_log
from netns import ADDRESSES
from realenv import run
from tunnelrun import TunnelRun, check_printed_command, get_status, local_port_of, through_gateway

pytestmark = pytest.mark.integration

START = "jupyter-node --scheduler sge"
SERVER_TIMEOUT = 120.0  # -w for a lab that starts in 2-5 s: the tool returns as soon as it is up


def qstat_job(job_id: str) -> str:
    """`qstat -j JOB` (as root): the job's name, owner, requests."""
    return run(["qstat", "-j", job_id], "qstat -j", check=False).stdout


def test_lab_on_the_node_through_the_tunnel_then_qdel(sge_cluster: SgeCluster, cluster_user: ClusterUser, sshd):
    user = cluster_user
    started = time.monotonic()
    done = user.ssh_head(f"cd && {START} -t lab -w {SERVER_TIMEOUT:g}s")
    took = time.monotonic() - started
    assert done.returncode == jn.EXIT_OK, done.stderr
    report = parse_node_report(done.stdout, done.stderr)
    assert "Info: Jupyter lab has been submitted to the queue." in done.stderr
    assert report.node == sge_cluster.node
    # the printed command, exactly: the head as the user reaches it, the node the job runs on
    assert shlex.split(done.stdout) == ["jupyter-tunnel", "-s", f"{user.name}@{user.head}", "-n", report.node]
    assert took < SERVER_TIMEOUT / 2, "it waited for -w instead of returning once the server was up"
    # the ssh session on the head is over: the job still runs, as the user, under its name
    assert sge_cluster.job_state(report.job_id) == "r"
    assert sge_cluster.job_host(report.job_id) == sge_cluster.node
    details = qstat_job(report.job_id)
    assert "job_name:                   jp-lab" in details and f"owner:                      {user.name}" in details
    # the log holds the token: private to the user; the token is printed nowhere else
    log = os.stat(report.log)
    assert (stat.S_IMODE(log.st_mode), log.st_uid) == (0o600, user.uid)
    server = user.server_info(report.port)
    token = server["token"]
    assert token and token not in done.stdout + done.stderr

    # on "the laptop": the printed command, through a gateway as well
    offset = sshd.log_offset()
    tunnel = TunnelRun(user.client_config, *through_gateway(done.stdout))
    try:
        url = tunnel.url(timeout=60)
        assert url == f"http://localhost:{local_port_of(url)}/?token={token}"
        status, body = get_status(url)
        assert status == 200 and "started" in body
        assert f"Info: Jupyter port {report.port}" in tunnel.stderr
        # one login per hop to the head (gw, head), and the head's one login into the node
        logins = logins_by_target(sshd, offset)
        assert sorted(logins) == sorted([("jtuser", "127.0.0.1"), (user.name, "127.0.0.2"),
                                         (user.name, user.node_address)]), logins
        assert tunnel.stop(signal.SIGINT) == jt.EXIT_OK
        tunnel.assert_clean()
    finally:
        tunnel.kill()
    assert "Traceback" not in tunnel.stderr
    # Ctrl+C closed the tunnel, not the server: it is the user's job
    assert sge_cluster.job_state(report.job_id) == "r"
    assert tcp_open(report.node, report.port) and os.path.exists(f"/proc/{server['pid']}")

    done = user.ssh_head(f"qdel {report.job_id}")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: sge_cluster.job_state(report.job_id) is None, 60, interval=0.2, what="the job to end")
    wait_for(lambda: not tcp_open(report.node, report.port), 30, what="the server to stop listening")


def test_bad_queue_is_an_error_with_the_log(sge_cluster: SgeCluster, cluster_user: ClusterUser):
    done = cluster_user.ssh_head(f"cd && {START} -q nosuch.q -w 60s")
    assert done.returncode == jn.EXIT_ERROR, done.stderr
    # qrsh's own reason, in the Error line (and in the log's last lines after it)
    assert "Error: Jupyter notebook did not start: error: no suitable queues." in done.stderr
    assert done.stdout == ""
    assert sge_cluster.jobs() == []  # rejected at once (-w e), not left waiting in the queue


def test_wait_0_returns_at_once_and_notebook_is_the_default(sge_cluster: SgeCluster, cluster_user: ClusterUser):
    started = time.monotonic()
    done = cluster_user.ssh_head(f"cd && {START} -w 0")
    assert done.returncode == jn.EXIT_OK, done.stderr
    assert time.monotonic() - started < 10
    assert "Info: Jupyter notebook has been submitted to the queue." in done.stderr
    assert "Not waiting (-w 0)" in done.stderr and done.stdout == ""
    log = done.stderr.rsplit(" will be in ", 1)[1].split()[0]
    # the job runs anyway: job name "notebook", a real `jupyter notebook` server
    jobs = wait_for(sge_cluster.jobs, 30, what="the job to be in the queue")
    assert "job_name:                   notebook" in qstat_job(jobs[0])
    # the log says where it runs (the marker line), then the server's URL once it listens
    logged = wait_for(lambda: parse_log(open(log).read()).port and parse_log(open(log).read()), 60,
                      what="the server's URL in the log")
    assert (logged.job_id, logged.node) == (jobs[0], cluster_user.node)
    server = cluster_user.server_info(logged.port)
    assert "jupyter-notebook" in open(f"/proc/{server['pid']}/cmdline").read()


def test_pre_activates_a_venv_on_the_node_and_resources_reach_qrsh(sge_cluster: SgeCluster,
                                                                    cluster_user: ClusterUser):
    user = cluster_user
    # jupyter is not on PATH on the head: only the venv activated on the node has it
    activate = shlex.quote(f". {user.venv}/bin/activate")
    done = user.ssh_head(f"cd && {START} -t lab --pre {activate} -q all.q -n {user.node} "
                         f"-r h_vmem=2G -w {SERVER_TIMEOUT:g}s", venv_on_path=False)
    assert done.returncode == jn.EXIT_OK, done.stderr
    report = parse_node_report(done.stdout, done.stderr)
    assert report.port and report.node == user.node
    [requests] = [l for l in qstat_job(report.job_id).splitlines() if l.startswith("hard resource_list:")]
    assert requests.split()[-1].split(",") == ["qname=all.q", f"hostname={user.node}", "h_vmem=2G"]


def test_missing_jupyter_is_reported_before_submitting(sge_cluster: SgeCluster, cluster_user: ClusterUser):
    done = cluster_user.ssh_head(f"{START} -t lab", venv_on_path=False)
    assert done.returncode == jn.EXIT_MISSING
    assert "Error: jupyter not found in PATH" in done.stderr
    assert sge_cluster.jobs() == []


def test_node_reachable_only_from_the_head(sge_netns, cluster_user: ClusterUser):
    """As real clusters look: client -> gw -> head -> node, each its own host (network namespace)."""
    hosts, cell = sge_netns
    user = cluster_user
    # the client reaches gw only; the node is not even routed to
    assert tcp_open(ADDRESSES["gw"], 22) and not tcp_open(ADDRESSES["head"], 22)
    assert not tcp_open(ADDRESSES["node"], 22)

    done = hosts.ssh("-J", "gw", "head",
                     f"PATH={user.bin_dir}:{user.venv}/bin:$PATH; export PATH; "
                     f"cd && jupyter-node --scheduler sge -t lab -w {SERVER_TIMEOUT:g}s")
    assert done.returncode == jn.EXIT_OK, done.stderr
    report = parse_node_report(done.stdout, done.stderr)
    assert report.node == "node"  # the job's own view: `hostname --fqdn` on the node
    assert shlex.split(done.stdout) == ["jupyter-tunnel", "-s", f"{user.name}@head", "-n", "node"]
    assert cell.job_state(report.job_id) == "r"
    assert "all.q@node" in cell.qstat("-u", "*")
    assert not tcp_open(ADDRESSES["node"], report.port)  # the server: only from the head
    token = user.server_info(report.port)["token"]

    check_printed_command(hosts, done.stdout, token, user.name)
    assert cell.job_state(report.job_id) == "r"

    done = hosts.ssh("-J", "gw", "head", f"qdel {report.job_id}")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: cell.job_state(report.job_id) is None, 60, interval=0.2, what="the job to end")


def test_json_submit_list_reuse_cancel_sent_on_stdin(sge_cluster: SgeCluster, cluster_user: ClusterUser):
    """What jupyter-tunnel --submit and -n auto ask, the way they ask it: the source on stdin."""
    user = cluster_user
    done, job = user.node_json(f"--scheduler sge -t lab -r h_rt=600 -w {SERVER_TIMEOUT:g}s")
    assert done.returncode == jn.EXIT_OK, done.stderr
    assert {key: job[key] for key in ("scheduler", "name", "state", "node", "existing", "error")} == {
        "scheduler": "sge", "name": "jp-lab", "state": "ready", "node": user.node, "existing": False, "error": None}
    assert tcp_open(job["node"], job["port"]) and user.server_info(job["port"])["token"]
    assert 600 - SERVER_TIMEOUT <= job["time_left"] <= 600  # h_rt minus the time it has run
    assert "Info: the job is pending" in done.stderr  # a change of state, as it happened
    # the ssh session returned: the qrsh holding the job lives on without it
    assert sge_cluster.job_state(job["job"]) == "r"
    check_listed_reused_cancelled(user, "sge", job, sge_cluster.node, SERVER_TIMEOUT, sge_cluster.jobs,
                                  lambda: sge_cluster.job_state(job["job"]) is None)
