"""jupyter_tunnel.py --submit, -n auto and --job on the real clusters, from the laptop only.

As real clusters look (tests/netns.py): client -> gw -> head -> node, the node reachable only
from the head, and jupyter_node.py NOT on the head: the tunnel sends its source to the head's
python3 through its one login.  What a user would check: the page answers through the URL,
one login per host for the whole run, Ctrl+C leaves the job running, a later run finds it,
the job's time left and the warning, the tunnel closing by itself when the job ends, and the
errors (the scheduler's words, no job, no python3 on the head); and --submit through a head
whose python3 is 3.6 (RHEL/Rocky 8, CentOS 7).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import jupyter_tunnel as jt
import pythons
from cluster import ClusterUser
from helpers import wait_for
from tunnelrun import SHUTDOWN, TunnelRun, get_status

pytestmark = pytest.mark.integration

WAIT = "120"  # -w: the job's whole wait; the tunnel goes on as soon as the server is up
JOB_RE = re.compile(r"Info: Running in (sge|slurm) job (\S+) \((jp-lab|notebook)\) on (\S+): ")


def activate(user: ClusterUser) -> str:
    """--pre: the venv with jupyter, activated on the node (the head has no jupyter on PATH)."""
    return f". {user.venv}/bin/activate"


def job_of(tunnel: TunnelRun) -> str:
    """The job id the tunnel's Info line names."""
    found = JOB_RE.search(tunnel.stderr)
    assert found, tunnel.stderr
    return found.group(2)


def ready(tunnel: TunnelRun) -> dict:
    """The --json object printed once the tunnel answers; the page answers through its URL."""
    # the job's wait (-w) and the tunnel's: a run that fails says so at once
    wait_for(lambda: not tunnel.lines.empty() or tunnel.process.poll() is not None, 180, interval=0.2,
             what="the tunnel to be ready")
    assert tunnel.process.poll() is None, tunnel.stderr
    info = json.loads(tunnel.url())
    assert get_status(info["url"])[0] == 200, tunnel.stderr
    return info


def run_to_the_end(hosts, *args: str, timeout: float = 60) -> TunnelRun:
    """A run that must end by itself (an error): its exit code and stderr are then read."""
    with TunnelRun(hosts.config, "-s", "gw", "head", *args) as tunnel:
        tunnel.wait(timeout)
    return tunnel


def submit_find_and_cancel(hosts, cluster, user: ClusterUser, scheduler: str, running: str, find: str,
                           cancel_with: str = "--stop-server") -> None:
    """The scenario of the issue, for one scheduler: --submit, Ctrl+C, -n auto (and --list) or
    --job ID (``find``), --submit again, then cancelled by that run's --stop-server or by a
    run of its own with --job ID --stop (``cancel_with``)."""
    assert hosts.ssh("-J", "gw", "head", "command -v jupyter-node jupyter_node.py").stdout == ""  # not installed
    offsets = hosts.log_offsets()
    with TunnelRun(hosts.config, "-s", "gw", "head", "--submit", "-t", "lab", "--pre", activate(user),
                   "--scheduler", scheduler, "-w", WAIT, "--json") as first:
        info = ready(first)
        job = job_of(first)
        assert (info["job"], info["scheduler"], info["remote_host"]) == (job, scheduler, "node")
        # one login on gw, one on head, one from head to node (the discovery), for the whole run
        assert hosts.logins_since(offsets) == {"gw": [user.name], "head": [user.name], "node": [user.name]}
        assert "Info: Submitting jupyter lab on head" in first.stderr
        assert first.stop(signal.SIGINT) == jt.EXIT_OK
        first.assert_clean()
    cancel = f"{'qdel' if scheduler == 'sge' else 'scancel'} {job}"
    assert "keeps running on node" in first.stderr and f"{cancel} on head stops it" in first.stderr
    assert cluster.job_state(job) == running  # Ctrl+C closed the tunnel, not the job

    listed = run_to_the_end(hosts, "-n", "auto", "--list", "--scheduler", scheduler)
    assert listed.process.returncode == jt.EXIT_OK, listed.stderr
    wait_for(lambda: len(listed.lines.queue) == 2, 5, what="the list on stdout")
    assert [line.split()[:5] for line in listed.lines.queue] == [
        ["#", "JOB", "NAME", "STATE", "NODE"], ["1", job, "jp-lab", "running", "node"]]
    assert f"{info['remote_port']} lab" in listed.lines.queue[1]

    # from "another machine": -n auto (or --job ID) finds the job and reaches the same server
    with TunnelRun(hosts.config, "-s", "gw", "head", *(["-n", "auto"] if find == "auto" else ["--job", job]),
                   "--scheduler", scheduler, "--json") as again:
        assert ready(again)["url"].split("?")[1] == info["url"].split("?")[1]  # the same token
        assert job_of(again) == job
        assert again.stop(signal.SIGINT) == jt.EXIT_OK

    # --submit again attaches to it (and says so); --stop-server then cancels the job
    stop_server = ["--stop-server"] if cancel_with == "--stop-server" else []
    with TunnelRun(hosts.config, "-s", "gw", "head", "--submit", "-t", "lab", "--pre", activate(user),
                   "--scheduler", scheduler, "-w", WAIT, "--json", *stop_server) as third:
        ready(third)
        # jupyter_node.py's own line, relayed, and said once: nothing about a wait, no state twice
        found = f"Found your Jupyter job {job} (jp-lab): attaching to it instead of submitting another " \
                "(--new submits one)."
        assert f"Info: {found}" in third.stderr and third.stderr.count("attaching to it") == 1
        assert "Waiting up to" not in third.stderr and "waiting up to" not in third.stderr
        assert cluster.jobs() == [job]
        assert third.stop(signal.SIGINT) == jt.EXIT_OK
        third.assert_clean()
    if cancel_with == "--stop":  # one command, no tunnel (issue 22)
        assert cluster.job_state(job) == running
        third = run_to_the_end(hosts, "--job", job, "--scheduler", scheduler, "--stop")
        assert third.process.returncode == jt.EXIT_OK, third.stderr
        assert "Port used on localhost" not in third.stderr and third.lines.empty()
    assert f"Info: Cancelled job {job} (jp-lab)." in third.stderr
    wait_for(lambda: cluster.job_state(job) in (None, "CANCELLED"), 60, interval=0.2, what="the job to end")
    for run in (first, listed, again, third):
        assert "Traceback" not in run.stderr, run.stderr


def test_sge_submit_then_auto_then_stop(sge_netns, cluster_user: ClusterUser):
    hosts, cell = sge_netns
    submit_find_and_cancel(hosts, cell, cluster_user, "sge", "r", find="auto")


def test_slurm_submit_then_auto_then_stop(slurm_netns, cluster_user: ClusterUser):
    hosts, cluster = slurm_netns
    submit_find_and_cancel(hosts, cluster, cluster_user, "slurm", "RUNNING", find="job", cancel_with="--stop")


def test_slurm_submit_and_stop_server_without_a_master(slurm_netns, cluster_user: ClusterUser):
    """Issue 23: jupyter_node.py, the discovery and the cancel through the one ssh's shell, the
    node (known to the head only) through its SOCKS port; one login per host, as with a master."""
    hosts, cluster = slurm_netns
    offsets = hosts.log_offsets()
    with TunnelRun(hosts.config, "--no-control-master", "-s", "gw", "head", "--submit", "-t", "lab",
                   "--pre", activate(cluster_user), "--scheduler", "slurm", "-w", WAIT, "--json",
                   "--stop-server") as run:
        info = ready(run)
        job = job_of(run)
        assert info["remote_host"] == "node" and info["job"] == job
        assert hosts.logins_since(offsets) == {"gw": [cluster_user.name], "head": [cluster_user.name],
                                               "node": [cluster_user.name]}
        assert not [line for line in run.leftovers() if " -M " in line or " -S " in line]
        assert run.stop(signal.SIGINT) == jt.EXIT_OK
        run.assert_clean()
    assert f"Info: Cancelled job {job} (jp-lab)." in run.stderr and "Traceback" not in run.stderr
    wait_for(lambda: cluster.job_state(job) in (None, "CANCELLED"), 60, interval=0.2, what="the job to end")


def test_sge_short_job_warns_then_the_tunnel_closes_when_it_ends(sge_netns, cluster_user: ClusterUser):
    hosts, cell = sge_netns
    # h_rt 100 s, --warn-before 1: the 2-minute mark has passed at the start (a warning at once),
    # the 1-minute one comes while the tunnel runs; then the job's end closes the tunnel
    with TunnelRun(hosts.config, "-s", "gw", "head", "--submit", "-t", "lab", "--pre", activate(cluster_user),
                   "--scheduler", "sge", "-r", "h_rt=0:1:40", "-w", WAIT, "--warn-before", "1",
                   "--check-interval", "1", "--json") as tunnel:
        info = ready(tunnel)
        job = job_of(tunnel)
        assert re.search(rf"Info: Running in sge job {job} \(jp-lab\) on node: (1 min|\d+ s) left", tunnel.stderr)
        assert 60 < info["time_left"] <= 100, tunnel.stderr  # else the 1-minute mark was missed
        [entry] = tunnel.states()  # the registry, for jupyter-tunnel-shutdown --list
        assert (entry["job"], entry["scheduler"]) == (job, "sge") and entry["job_end"] > entry["started"]
        listed = subprocess.run([sys.executable, str(SHUTDOWN), "--list"], env=tunnel.env, capture_output=True,
                                text=True, timeout=30)
        header, row = listed.stdout.splitlines()
        # a cell starts where its column's name does (names are two spaces apart at least;
        # "TIME LEFT" holds spaces, and so may its cells)
        names = re.split(r"  +", header)
        starts = [header.index(name) for name in names]
        cells = dict(zip(names, (row[a:b].strip() for a, b in zip(starts, [*starts[1:], None]))))
        assert cells["JOB"] == job
        assert re.fullmatch(r"1 min|\d+ s", cells["TIME LEFT"]), listed.stdout
        assert tunnel.wait(timeout=150) == jt.EXIT_OK  # closed by itself
        tunnel.assert_clean()
    warnings = re.findall(rf"^Warning: job {job} ends in (1 min|\d+ s) \(time limit\): save your notebooks\.$",
                          tunnel.stderr, re.M)
    # at once (about 95 s left: shown rounded up to the mark's words), then at the 1-minute mark
    assert warnings == ["1 min", "1 min"], tunnel.stderr
    assert f"Info: Job {job} (jp-lab) has ended; closing the tunnel." in tunnel.stderr
    assert cell.job_state(job) is None


def test_sge_errors(sge_netns, cluster_user: ClusterUser):
    hosts, cell = sge_netns
    none = run_to_the_end(hosts, "-n", "auto", "--scheduler", "sge")
    assert none.process.returncode == jt.EXIT_NO_SERVER
    assert "Error: no Jupyter job of yours runs on head's cluster: start one with --submit" in none.stderr

    refused = run_to_the_end(hosts, "--submit", "-q", "nosuch.q", "--pre", activate(cluster_user),
                             "--scheduler", "sge", "-w", "60")
    assert refused.process.returncode == jt.EXIT_START, refused.stderr
    assert "Error: the Jupyter job could not start on head: " in refused.stderr
    assert "no suitable queues" in refused.stderr  # qrsh's own words
    assert cell.jobs() == []

    for python in ("/nonexistent/python3", "python2.1"):
        missing = run_to_the_end(hosts, "--submit", "--python", python, "--scheduler", "sge")
        assert missing.process.returncode == jt.EXIT_MISSING, missing.stderr
        assert f"Error: {python} not found on head, where it runs jupyter_node.py" in missing.stderr
        assert "Traceback" not in missing.stderr
    assert cell.jobs() == [] and "Traceback" not in none.stderr + refused.stderr


def test_slurm_job_still_pending_at_the_timeout(slurm_netns, cluster_user: ClusterUser):
    hosts, cluster = slurm_netns
    # a job that may not start for an hour: Slurm holds it with the reason "BeginTime"
    pending = run_to_the_end(hosts, "--submit", "--pre", activate(cluster_user), "--scheduler", "slurm",
                             "-r", "begin=now+3600", "-w", "5")
    assert pending.process.returncode == jt.EXIT_TIMEOUT, pending.stderr
    [job] = cluster.jobs()
    assert cluster.job_state(job) == "PENDING"  # it stays in the queue, as the error says
    [error] = [line for line in pending.stderr.splitlines() if line.startswith("Error: ")]
    assert error == (f"Error: job {job} (jp-lab) is still pending (BeginTime) after 5 s; it stays in the queue: "
                     f"attach to it later with jupyter-tunnel -s gw head --job {job}, or cancel it with "
                     f"scancel {job} on head"), pending.stderr
    # shown while it waited, with the wait; nothing for someone on the head (its log, jupyter-node)
    assert f"Info: job {job} is pending (BeginTime); waiting up to 5s for it to start..." in pending.stderr
    assert "jupyter_nb_" not in pending.stderr and "jupyter-node" not in pending.stderr
    assert "Traceback" not in pending.stderr


def test_slurm_two_jobs_on_one_node_auto_takes_the_picked_jobs_own_server(slurm_netns, cluster_user: ClusterUser):
    hosts, cluster = slurm_netns
    tokens = {}  # job id -> its server's token
    for _ in range(2):
        with TunnelRun(hosts.config, "-s", "gw", "head", "--submit", "--new", "-t", "lab", "--pre",
                       activate(cluster_user), "--scheduler", "slurm", "-w", WAIT, "--json") as run:
            url = ready(run)["url"]
            tokens[job_of(run)] = url.split("?")[1]
            assert run.stop(signal.SIGINT) == jt.EXIT_OK
    assert sorted(cluster.jobs()) == sorted(tokens) and len(set(tokens.values())) == 2
    # two jobs, no terminal, no choice: an error that lists them and names the options
    unsure = run_to_the_end(hosts, "-n", "auto", "--scheduler", "slurm")
    assert unsure.process.returncode == jt.EXIT_NO_SERVER, unsure.stderr
    assert ("Error: 2 Jupyter jobs of yours run on head's cluster: choose one with --job ID or --pick N"
            in unsure.stderr)
    # --pick N: that job, and on the node both share, that job's own server
    picked_jobs = []
    for pick in ("1", "2"):
        with TunnelRun(hosts.config, "-s", "gw", "head", "-n", "auto", "--pick", pick, "--scheduler", "slurm",
                       "--json") as picked:
            url = ready(picked)["url"]
            picked_jobs.append(job_of(picked))
            assert url.split("?")[1] == tokens[picked_jobs[-1]], picked.stderr
            assert picked.stop(signal.SIGINT) == jt.EXIT_OK
    assert sorted(picked_jobs) == sorted(tokens)  # --pick 1 and --pick 2: one job each


@pytest.fixture(scope="module")
def head_python36():
    """A Python 3.6 (RHEL/Rocky 8's, CentOS 7's python3) that the cluster user can run on the
    head: pyenv's, copied out of root's home, which no other user may enter; its libpython
    found through LD_LIBRARY_PATH, which comes before the RUNPATH into root's home."""
    version = pythons.choose_node_version(pythons.installed_versions())
    if version is None:
        pytest.fail(f"no Python 3.6 under {pythons.PYENV_ROOT}/versions (pyenv install 3.6)", pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="jt-py36-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        shutil.copytree(Path(pythons.PYENV_ROOT) / "versions" / version, directory / "python", symlinks=True,
                        ignore=shutil.ignore_patterns("test", "tests", "idlelib", "tkinter"))
        program = directory / "python3"
        program.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={directory}/python/lib "
                           f'exec {directory}/python/bin/python3 "$@"\n')
        program.chmod(0o755)
        yield str(program)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_sge_submit_with_a_python36_head(sge_netns, cluster_user: ClusterUser, head_python36: str):
    hosts, cell = sge_netns
    version = hosts.ssh("-J", "gw", "head", f"{head_python36} -c 'import sys; print(sys.version_info[:2])'")
    assert version.stdout.strip() == "(3, 6)", version.stderr
    with TunnelRun(hosts.config, "-s", "gw", "head", "--submit", "--python", head_python36, "-t", "lab",
                   "--pre", activate(cluster_user), "--scheduler", "sge", "-w", WAIT, "--json",
                   "--stop-server") as tunnel:
        info = ready(tunnel)
        job = job_of(tunnel)
        assert (info["job"], info["remote_host"]) == (job, "node")
        assert tunnel.stop(signal.SIGINT) == jt.EXIT_OK
        tunnel.assert_clean()
    assert f"Info: Cancelled job {job} (jp-lab)." in tunnel.stderr
    assert "Traceback" not in tunnel.stderr
    wait_for(lambda: cell.job_state(job) is None, 60, interval=0.2, what="the job to end")
