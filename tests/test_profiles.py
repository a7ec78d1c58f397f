"""Integration tests of the named profiles (issue 24): a profile file in the run's own
XDG_CONFIG_HOME, read by a real ``jupyter-tunnel NAME`` run to the real sshd and JupyterLab
(the URL answers, one login per hop, nothing left), the command line adding to the profile,
a bad profile stopping before any login, and a ``--submit`` profile on the Slurm cluster."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import jupyter_tunnel as jt
from helpers import wait_for
from test_cluster_jobs import activate, job_of, ready
from tunnelrun import TunnelRun, get_status, local_port_of

pytestmark = pytest.mark.integration


def profiles_home(tmp_path: Path, text: str) -> dict[str, str]:
    """The environment of a run whose user's profiles.ini holds ``text``."""
    home = tmp_path / "config"
    (home / "jupyter-tunnel").mkdir(parents=True)
    (home / "jupyter-tunnel" / "profiles.ini").write_text(text, encoding="utf-8")
    return {"XDG_CONFIG_HOME": str(home)}


def test_a_profile_runs_a_real_tunnel_and_the_command_line_adds_to_it(sshd, jtuser_server, tmp_path):
    # the profile names the gateway, the ssh config and no browser; the command line adds the
    # server to its -s: the run goes through both (one login each) only if both were read
    env = profiles_home(tmp_path, f"# a gateway\n[lab]\nhost = gw\nssh-config = {sshd.config}\n"
                                  "browser = none\nverbose = yes\nkeepalive = 5\n")
    path = tmp_path / "config" / "jupyter-tunnel" / "profiles.ini"
    offset = sshd.log_offset()
    with TunnelRun(sshd.config, "-s", "srv", "--keepalive", "7", profile="lab", env=env) as run:
        url = run.url()
        assert url == f"http://localhost:{local_port_of(url)}/?token={jtuser_server.token}"
        assert get_status(url)[0] == 200
        logins = sshd.logins_since(offset)
        assert len(logins) == 2 and all("Accepted publickey for jtuser" in line for line in logins), logins
        assert f"Debug: Profiles: {path}: read" in run.stderr
        assert f"Debug: Profile lab: {path}:2" in run.stderr
        assert (f"Debug: Command line: jupyter-tunnel --host=gw --ssh-config={sshd.config} --browser=none --verbose "
                "--keepalive=5 -s srv --keepalive 7") in run.stderr
        # the command line's --keepalive 7 overrides the profile's 5: ssh is given 7
        assert "ServerAliveInterval 7" in run.stderr and "ServerAliveInterval 5" not in run.stderr
        [state] = run.states()
        assert state["hosts"] == ["gw", "srv"]
        assert run.stop(signal.SIGINT) == jt.EXIT_OK
        assert "Traceback" not in run.stderr
        run.assert_clean()


def test_profiles_shows_the_command_line_and_runs_nothing(sshd, tmp_path):
    env = profiles_home(tmp_path, f"[lab]\nhost = gw srv\nssh-config = {sshd.config}\nbrowser = none\n")
    offset = sshd.log_offset()
    with TunnelRun(sshd.config, "--local-port", "9999", "--profiles", profile="lab", env=env) as run:
        assert run.wait() == jt.EXIT_OK
    assert list(run.lines.queue) == [f"jupyter-tunnel --host=gw --host=srv --ssh-config={sshd.config} "
                                     "--browser=none --local-port 9999"]
    assert run.stderr == "" and sshd.logins_since(offset) == []


@pytest.mark.parametrize("text, message", [
    ("[lab]\nhost = gw srv\nkeepalive = 0\n", "{path}:3: [lab] keepalive: expected a whole number from 1 to 3600, "
                                              "not '0'"),
    ("[lab]\nhost = gw srv\nsubmit\n", "{path}:3: neither a [NAME] line, nor a 'key = value' line, nor a comment: "
                                       "'submit'"),
    ("[other]\nhost = gw\n", "no profile lab in {path}, /etc/jupyter-tunnel/profiles.ini (jupyter-tunnel "
                             "--profiles lists them)"),
])
def test_a_bad_profile_is_one_error_line_before_any_login(sshd, tmp_path, text, message):
    env = profiles_home(tmp_path, text)
    path = tmp_path / "config" / "jupyter-tunnel" / "profiles.ini"
    offset = sshd.log_offset()
    with TunnelRun(sshd.config, "-F", str(sshd.config), profile="lab", env=env) as run:
        assert run.wait() == jt.EXIT_USAGE
    assert run.stderr == "Error: " + message.format(path=path)
    assert sshd.logins_since(offset) == [] and run.lines.empty()


def test_a_submit_profile_on_slurm(slurm_netns, cluster_user, tmp_path):
    """The issue's own example: a cluster user's daily line as a profile, one word to run.
    ``wait`` is jupyter-node's key: the tunnel leaves it out (one profile serves both)."""
    hosts, cluster = slurm_netns
    env = profiles_home(tmp_path, f"""\
[hpc]
host = gw head
ssh-config = {hosts.config}
browser = none
submit = yes
type = lab
scheduler = slurm
pre = {activate(cluster_user)}
timeout = 2m
wait = 2m
json = yes
""")
    with TunnelRun(hosts.config, "--stop-server", profile="hpc", env=env) as run:
        info = ready(run)
        job = job_of(run)
        assert (info["job"], info["scheduler"], info["remote_host"]) == (job, "slurm", "node")
        assert cluster.jobs() == [job]
        assert run.stop(signal.SIGINT) == jt.EXIT_OK
        run.assert_clean()
    # --stop-server from the command line, with the profile's --submit: the job is cancelled
    assert f"Info: Cancelled job {job} (jp-lab)." in run.stderr
    wait_for(lambda: cluster.job_state(job) in (None, "CANCELLED"), 60, interval=0.2, what="the job to end")
    assert "Traceback" not in run.stderr  # (ready() read the --json object: the profile's json = yes)
