"""jupyter_node.py on a real single-host Slurm cluster, and jupyter_tunnel.py -n to its node.

As for Grid Engine (test_node_sge.py): ``ssh USER@HEAD jupyter-node --scheduler slurm ...``
submits a real JupyterLab as a batch job, the printed ``jupyter-tunnel`` command reaches it,
Ctrl+C leaves the job, ``scancel`` ends it.  jupyter_tunnel.py needs nothing Slurm-specific.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import time
from pathlib import Path

import pytest

import jupyter_node as jn
import jupyter_tunnel as jt
from cluster import ClusterUser, SgeCluster, SlurmCluster, check_listed_reused_cancelled, logins_by_target, parse_node_report
from helpers import tcp_open, wait_for
from netns import ADDRESSES
from tunnelrun import TunnelRun, check_printed_command, get_status, local_port_of

pytestmark = pytest.mark.integration

START = "jupyter-node --scheduler slurm"
SERVER_TIMEOUT = 120.0


def test_lab_batch_job_through_the_tunnel_then_scancel(slurm_cluster: SlurmCluster, cluster_user: ClusterUser,
                                                       sshd):
    user = cluster_user
    done = user.ssh_head(f"cd && {START} -t lab -r mem=200M -r time=30:00 -w {SERVER_TIMEOUT:g}s")
    assert done.returncode == jn.EXIT_OK, done.stderr
    report = parse_node_report(done.stdout, done.stderr)
    assert f"Info: Jupyter lab has been submitted to the queue as job {report.job_id}." in done.stderr
    assert shlex.split(done.stdout) == ["jupyter-tunnel", "-s", f"{user.name}@{user.head}", "-n", report.node]
    # a batch job: it runs on after the ssh session on the head, as the user, with what was asked
    assert slurm_cluster.job_state(report.job_id) == "RUNNING"
    job = slurm_cluster.show_job(report.job_id)
    assert job["JobName"] == "jp-lab" and job["UserId"].startswith(f"{user.name}(")
    assert job["NodeList"] == slurm_cluster.node and job["Partition"] == slurm_cluster.partition
    assert job["TimeLimit"] == "00:30:00" and job.get("MinMemoryNode") == "200M", job
    log = os.stat(report.log)
    assert (stat.S_IMODE(log.st_mode), log.st_uid) == (0o600, user.uid)
    server = user.server_info(report.port)
    token = server["token"]
    assert token not in done.stdout + done.stderr

    offset = sshd.log_offset()
    tunnel = TunnelRun(user.client_config, *shlex.split(done.stdout)[1:])
    try:
        url = tunnel.url(timeout=60)
        assert url == f"http://localhost:{local_port_of(url)}/?token={token}"
        assert get_status(url)[0] == 200
        assert sorted(logins_by_target(sshd, offset)) == sorted([(user.name, "127.0.0.2"),
                                                                 (user.name, user.node_address)])
        assert tunnel.stop(signal.SIGINT) == jt.EXIT_OK
        tunnel.assert_clean()
    finally:
        tunnel.kill()
    assert slurm_cluster.job_state(report.job_id) == "RUNNING"

    done = user.ssh_head(f"scancel {report.job_id}")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: slurm_cluster.job_state(report.job_id) in (None, "CANCELLED"), 60, interval=0.2,
             what="the job to end")
    wait_for(lambda: not tcp_open(report.node, report.port), 30, what="the server to stop listening")


def test_bad_partition_is_an_error(slurm_cluster: SlurmCluster, cluster_user: ClusterUser):
    done = cluster_user.ssh_head(f"cd && {START} -q nosuch -w 30s")
    assert done.returncode == jn.EXIT_ERROR, done.stderr
    # sbatch's own reason, in the Error line
    assert "Error: sbatch could not submit the job: sbatch: error: invalid partition specified: nosuch" \
        in done.stderr
    assert done.stdout == "" and slurm_cluster.jobs() == []


def test_job_that_fails_on_the_node_is_an_error_with_the_log(slurm_cluster: SlurmCluster,
                                                             cluster_user: ClusterUser):
    pre = shlex.quote("echo 'module: no such module python/9' >&2; false")
    started = time.monotonic()
    done = cluster_user.ssh_head(f"cd && {START} -t lab --pre {pre} -w {SERVER_TIMEOUT:g}s")
    assert done.returncode == jn.EXIT_ERROR, done.stderr
    assert time.monotonic() - started < SERVER_TIMEOUT / 2  # noticed when the job ended, not at -w
    # the command that failed, told by the job itself (build_server_script's fail)
    assert "Error: Jupyter lab did not start: failed: echo 'module: no such module python/9' >&2; false. Log: " \
        in done.stderr
    assert "module: no such module python/9" in done.stderr  # the log's last lines
    assert jn.MARK not in done.stderr  # ...without jupyter-node's own marker lines


def _only(programs: dict, tmp: Path) -> str:
    """A PATH with only these programs (name -> real path): `which` finds no other scheduler."""
    tmp.mkdir(mode=0o755)
    for name, target in programs.items():
        (tmp / name).symlink_to(target)
    return str(tmp)


def test_scheduler_is_detected_when_only_slurm_is_there(slurm_cluster: SlurmCluster, cluster_user: ClusterUser,
                                                        session_dir: Path):
    # merged /usr: /bin is /usr/bin, where qrsh is too, so the PATH has neither
    only = _only({name: f"/usr/bin/{name}" for name in ("sbatch", "squeue", "srun", "hostname", "sh")},
                 session_dir / "only-slurm")
    venv = cluster_user.venv
    done = cluster_user.ssh_head(f"cd && PATH={only}:{cluster_user.bin_dir}:{venv}/bin exec jupyter-node -t lab -w {SERVER_TIMEOUT:g}s")
    assert done.returncode == jn.EXIT_OK, done.stderr
    report = parse_node_report(done.stdout, done.stderr)
    assert f"submitted to the queue as job {report.job_id}." in done.stderr  # sbatch's job id
    assert slurm_cluster.job_state(report.job_id) == "RUNNING"


def test_scheduler_detection_asks_when_ambiguous(slurm_cluster: SlurmCluster, cluster_user: ClusterUser,
                                                session_dir: Path):
    done = cluster_user.ssh_head("jupyter-node -t lab")  # /usr/bin has qrsh and sbatch here
    assert done.returncode == jn.EXIT_MISSING
    assert "Error: found both Grid Engine (qrsh) and Slurm (sbatch) on PATH: choose the one to submit to with " \
        "--scheduler sge|slurm" in done.stderr
    nothing = _only({}, session_dir / "no-scheduler")
    done = cluster_user.ssh_head(f"PATH={nothing}:{cluster_user.bin_dir}:{cluster_user.venv}/bin exec jupyter-node -t lab")
    assert done.returncode == jn.EXIT_MISSING and "found neither qrsh nor sbatch/srun" in done.stderr
    assert slurm_cluster.jobs() == []


def test_jobs_and_cancel_ask_both_schedulers_when_both_are_on_path(sge_cluster: SgeCluster,
                                                                   slurm_cluster: SlurmCluster,
                                                                   cluster_user: ClusterUser):
    """A head with Grid Engine and Slurm (/usr/bin has qrsh and sbatch here): listing and
    cancelling choose nothing, so they need no --scheduler; only submitting does."""
    user = cluster_user
    # a Jupyter job in each, whose activation never ends (no server needed)
    for scheduler in ("sge", "slurm"):
        done = user.ssh_head(f"cd && jupyter-node --scheduler {scheduler} --pre {shlex.quote('sleep 600')} -w 0")
        assert done.returncode == jn.EXIT_OK, done.stderr
    [sge_job] = wait_for(sge_cluster.jobs, 30, what="the Grid Engine job")
    [slurm_job] = slurm_cluster.jobs()

    done, listed = user.node_json("--jobs")  # as jupyter-tunnel -n auto asks, without --scheduler
    assert done.returncode == jn.EXIT_OK and "Warning" not in done.stderr, done.stderr
    assert listed["scheduler"] is None  # each job says its own
    assert sorted((job["scheduler"], job["job"], job["name"]) for job in listed["jobs"]) == [
        ("sge", sge_job, "notebook"), ("slurm", slurm_job, "notebook")]
    done = user.ssh_head("jupyter-node --jobs")
    assert done.returncode == jn.EXIT_OK, done.stderr
    header, *rows = [line.split()[:3] for line in done.stdout.splitlines()]
    assert header == ["SCHEDULER", "JOB", "NAME"]
    assert sorted(rows) == [["sge", sge_job, "notebook"], ["slurm", slurm_job, "notebook"]]

    # --cancel ID, in the one that has it, the other's job left alone
    collide = sge_job == slurm_job  # the two counters met: the id alone cannot say which
    if collide:
        done = user.ssh_head(f"jupyter-node --cancel {sge_job}")
        assert done.returncode == jn.EXIT_ERROR
        assert f"Error: both Grid Engine and Slurm have a job {sge_job} of yours: choose with --scheduler" \
            in done.stderr
    only = " --scheduler sge" if collide else ""
    done = user.ssh_head(f"jupyter-node --cancel {sge_job}{only}")
    where = "" if collide else " (Grid Engine)"
    assert (done.returncode, done.stderr) == (jn.EXIT_OK, f"Info: Cancelled job {sge_job}{where}.\n")
    wait_for(lambda: sge_cluster.job_state(sge_job) is None, 60, interval=0.2, what="the Grid Engine job to end")
    assert slurm_cluster.job_state(slurm_job) is not None
    done, cancelled = user.node_json(f"--cancel {slurm_job}")
    assert (done.returncode, cancelled) == (jn.EXIT_OK, {"cancelled": slurm_job, "scheduler": "slurm"}), done.stderr
    wait_for(lambda: slurm_cluster.job_state(slurm_job) in (None, "CANCELLED"), 60, interval=0.2,
             what="the Slurm job to end")


def test_node_reachable_only_from_the_head(slurm_netns, cluster_user: ClusterUser):
    """As real clusters look: client -> gw -> head (slurmctld) -> node (slurmd), network namespaces."""
    hosts, cluster = slurm_netns
    user = cluster_user
    assert not tcp_open(ADDRESSES["node"], 22)  # the client has no way to the node

    done = hosts.ssh("-J", "gw", "head",
                     f"PATH={user.bin_dir}:{user.venv}/bin:$PATH; export PATH; "
                     f"cd && jupyter-node --scheduler slurm -t lab -w {SERVER_TIMEOUT:g}s")
    assert done.returncode == jn.EXIT_OK, done.stderr
    report = parse_node_report(done.stdout, done.stderr)
    assert shlex.split(done.stdout) == ["jupyter-tunnel", "-s", f"{user.name}@head", "-n", "node"]
    assert cluster.job_state(report.job_id) == "RUNNING" and cluster.show_job(report.job_id)["NodeList"] == "node"
    token = user.server_info(report.port)["token"]

    check_printed_command(hosts, done.stdout, token, user.name)
    assert cluster.job_state(report.job_id) == "RUNNING"
    done = hosts.ssh("-J", "gw", "head", f"scancel {report.job_id}")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: cluster.job_state(report.job_id) in (None, "CANCELLED"), 60, interval=0.2, what="the job to end")


def test_json_submit_list_reuse_cancel_sent_on_stdin(slurm_cluster: SlurmCluster, cluster_user: ClusterUser):
    """What jupyter-tunnel --submit and -n auto ask, the way they ask it: the source on stdin."""
    user = cluster_user
    done, job = user.node_json(f"--scheduler slurm -t lab -r time=10 -w {SERVER_TIMEOUT:g}s")
    assert done.returncode == jn.EXIT_OK, done.stderr
    assert {key: job[key] for key in ("scheduler", "name", "state", "node", "existing", "error")} == {
        "scheduler": "slurm", "name": "jp-lab", "state": "ready", "node": slurm_cluster.node, "existing": False,
        "error": None}
    assert tcp_open(job["node"], job["port"]) and user.server_info(job["port"])["token"]
    assert 600 - SERVER_TIMEOUT <= job["time_left"] <= 600  # squeue's time left of --time=10
    assert f"Info: job {job['job']} is " in done.stderr  # a change of state, as it happened
    check_listed_reused_cancelled(user, "slurm", job, slurm_cluster.node, SERVER_TIMEOUT, slurm_cluster.jobs,
                                  lambda: slurm_cluster.job_state(job["job"]) in (None, "CANCELLED"))


def test_logs_are_private_in_the_home_and_those_of_ended_jobs_go(slurm_cluster: SlurmCluster,
                                                                 cluster_user: ClusterUser):
    """One place for the logs, which the job writes from the node (the home is shared), and a
    run removes those of jobs that ended: no pile of jupyter_nb_*.log in the head's /tmp."""
    user = cluster_user
    # a job that stays running without a server: its activation never ends
    done, job = user.node_json(f"--scheduler slurm --pre {shlex.quote('sleep 600')} -w 0")
    assert done.returncode == jn.EXIT_OK, done.stderr
    directory = user.home / ".local" / "state" / "jupyter-node"
    log = Path(job["log"])
    assert log.parent == directory and log.name.startswith(f"jupyter_nb_{user.name}_")
    for path, mode in ((directory, 0o700), (log, 0o600)):
        info = path.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (mode, user.uid), path
    # the job writes its marker there, from the node
    wait_for(lambda: jn.parse_log(log.read_text()).job_id == job["job"], 60, interval=0.2,
             what="the job's marker in its log")
    assert not list(Path("/tmp").glob(f"jupyter_nb_{user.name}_*.log"))

    # logs of jobs that ended (a job gone, a submission sbatch refused), an hour old, and
    # what is not ours to remove: a new log (a submission may be under way), another file
    planted = {
        "ended": f"{jn.MARK} submitting to slurm\n{jn.MARK} submitted to slurm as job 999999\n",
        "refused": f"{jn.MARK} submitting to slurm\nsbatch: error: invalid partition specified: nosuch\n",
        "young": f"{jn.MARK} submitting to slurm\n{jn.MARK} submitted to slurm as job 999998\n",
    }
    paths = {name: directory / f"jupyter_nb_{user.name}_head_{name:x<8}.log" for name in planted}
    paths["other"] = directory / "notes.txt"
    for name, path in paths.items():
        path.write_text(planted.get(name, "mine\n"))
        os.chown(path, user.uid, user.uid)
    hour_ago = time.time() - 3600
    for path in (log, paths["ended"], paths["refused"], paths["other"]):
        os.utime(path, (hour_ago, hour_ago))
    try:
        done, listed = user.node_json("--scheduler slurm --jobs")
        assert done.returncode == jn.EXIT_OK, done.stderr
        assert [row["job"] for row in listed["jobs"]] == [job["job"]]
        assert not paths["ended"].exists() and not paths["refused"].exists()
        assert log.exists() and paths["young"].exists() and paths["other"].exists()  # its job runs; the rest
    finally:
        paths["other"].unlink(missing_ok=True)  # the fixtures remove the logs, not this


def test_submit_pre_with_a_comment_or_a_background_command_starts_the_server(slurm_cluster: SlurmCluster,
                                                                              cluster_user: ClusterUser):
    """jupyter-tunnel --submit: each --pre runs on its own in the job script, as with --start:
    a trailing comment no longer eats the `exec jupyter`, and `CMD &` is no syntax error."""
    user = cluster_user
    with TunnelRun(user.client_config, "-s", f"{user.name}@{user.head}", "--submit", "--scheduler", "slurm",
                   "-t", "lab", "--pre", f". {user.venv}/bin/activate", "--pre", "true # a comment",
                   "--pre", "sleep 1000 &", "-w", f"{SERVER_TIMEOUT:g}", "--json", "--stop-server") as run:
        info = json.loads(run.url(timeout=SERVER_TIMEOUT + 60))
        assert get_status(info["url"])[0] == 200, run.stderr
        job = info["job"]
        assert slurm_cluster.job_state(job) == "RUNNING"
        assert run.stop(signal.SIGINT) == jt.EXIT_OK, run.stderr
    assert f"Info: Cancelled job {job} (jp-lab)." in run.stderr


def test_submit_pre_whose_dot_fails_says_which_and_why(slurm_cluster: SlurmCluster, cluster_user: ClusterUser):
    """A `.` of a missing file ends a POSIX sh before `|| fail` can speak: the job script runs it
    with `command eval`, so the error names the command, with the shell's own words."""
    user = cluster_user
    started = time.monotonic()
    with TunnelRun(user.client_config, "-s", f"{user.name}@{user.head}", "--submit", "--scheduler", "slurm",
                   "--pre", ". /nonexistent/activate", "-w", f"{SERVER_TIMEOUT:g}") as run:
        assert run.wait(SERVER_TIMEOUT + 60) == jt.EXIT_START, run.stderr
    assert time.monotonic() - started < SERVER_TIMEOUT / 2  # told by the job at once, not at -w
    [error] = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith(f"Error: the Jupyter job could not start on {user.name}@{user.head}: "
                            "failed: . /nonexistent/activate (log on "), error
    assert ".: cannot open /nonexistent/activate: No such file" in error  # dash's own words, from the log
    assert "Traceback" not in run.stderr
