"""Unit tests (no network): riding the user's own ssh master, and the config that keeps the
run's ssh processes from becoming masters of the user's kind."""

from __future__ import annotations

import subprocess

import pytest

import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd


@pytest.mark.parametrize("route, argv", [
    (jt.Route(("srv",)), ["ssh", "-F", "cfg", "-G", "srv"]),
    (jt.Route(("gw", "head", "srv:2222")), ["ssh", "-F", "cfg", "-G", "-J", "gw,head", "ssh://srv:2222"]),
])
def test_build_settings_argv(route, argv):
    assert jt.build_settings_argv("ssh", "cfg", route) == argv


def test_parse_ssh_settings_keeps_the_first_value():
    text = "user alice\ncontrolpath /home/a/.ssh/cm-1afc\nidentityfile ~/.ssh/id_rsa\nidentityfile ~/.ssh/id_ed25519\n"
    settings = jt.parse_ssh_settings(text)
    assert settings["controlpath"] == "/home/a/.ssh/cm-1afc"
    assert settings["identityfile"] == "~/.ssh/id_rsa"


@pytest.mark.parametrize("settings, node, path", [
    ({"controlpath": "/home/a/.ssh/cm-1afc"}, False, "/home/a/.ssh/cm-1afc"),
    ({"controlpath": "none"}, False, ""),
    ({}, False, ""),
    ({"controlpath": "cm-1afc"}, False, ""),  # relative: whose directory?
    # -n: the head logs into the node with the agent, which only a ForwardAgent master forwards
    ({"controlpath": "/c", "forwardagent": "no"}, True, ""),
    ({"controlpath": "/c"}, True, ""),
    ({"controlpath": "/c", "forwardagent": "yes"}, True, "/c"),
])
def test_shared_control_path(settings, node, path):
    assert jt.shared_control_path(settings, node) == path


def test_the_config_says_controlmaster_no_before_the_users_config():
    body = jt.build_ssh_config("/u/cfg", ["ControlMaster=auto"]).splitlines()
    # the user's -o still wins (first value); their config file does not
    assert body.index("ControlMaster auto") < body.index("ControlMaster no") < body.index('Include "/u/cfg"')


def test_ssh_reads_controlmaster_no_and_the_users_controlpath(tmp_path):
    """The real ssh -G: the user's ControlPath is in force, their ControlMaster auto is not."""
    user = tmp_path / "user"
    user.write_text("ControlMaster auto\nControlPath /tmp/cm-%C\nControlPersist 600\n")
    config = tmp_path / "generated"
    config.write_text(jt.build_ssh_config(str(user), []))
    done = subprocess.run(jt.build_settings_argv("ssh", str(config), jt.Route(("gw", "srv"))),
                          capture_output=True, text=True)
    settings = jt.parse_ssh_settings(done.stdout)
    assert settings["controlmaster"] == "false" and settings["controlpath"].startswith("/tmp/cm-")


@pytest.mark.parametrize("args, shares", [
    ([], True),
    (["--new-login"], False),
    (["-a"], False),  # asks for this run's own agent, hence its own login
])
def test_who_rides_the_users_master(args, shares):
    settings = jt.settings_from(jt.build_parser().parse_args(["-s", "srv", *args]))
    assert jt.Tunnel(settings, "ssh", jt.Route(("srv",))).connection.may_share is shares
    # -p: the password is for this run's own login
    assert not jt.Tunnel(settings, "ssh", jt.Route(("srv",)), password="pw").connection.may_share


DIR = "/tmp/jt-abcd1234"


@pytest.mark.parametrize("value, found", [
    ({"control": "/home/u/.ssh/cm-1afc", "specs": [f"{DIR}/f:localhost:8888"]},
     ("/home/u/.ssh/cm-1afc", (f"{DIR}/f:localhost:8888",))),
    ({"control": "/c", "specs": [f"{DIR}/f:/run/j.sock"]}, ("/c", (f"{DIR}/f:/run/j.sock",))),
    # Jupyter's and each --forward's (f1, f2...: the run's own sockets too)
    ({"control": "/c", "specs": [f"{DIR}/f:n1:8888", f"{DIR}/f1:n1:8787", f"{DIR}/f2:localhost:6006"]},
     ("/c", (f"{DIR}/f:n1:8888", f"{DIR}/f1:n1:8787", f"{DIR}/f2:localhost:6006"))),
    # an older run's entry: its one forward
    ({"control": "/c", "spec": f"{DIR}/f:localhost:8888"}, ("/c", (f"{DIR}/f:localhost:8888",))),
    (None, None),
    ({"control": "/c", "specs": []}, None),
    ({"control": "/c", "specs": f"{DIR}/f:localhost:8888"}, None),  # not a list
    # one forward that is not the run's own spoils the whole entry: nothing of it is cancelled
    ({"control": "/c", "specs": [f"{DIR}/f:n1:8888", "127.0.0.1:8787:n1:8787"]}, None),
    ({"control": "/c", "specs": [f"{DIR}/f:n1:8888", f"{DIR}/fx:n1:8787"]}, None),
    ({"control": "/c", "specs": [f"{DIR}/f12345:n1:8787"]}, None),
    ({"control": "/c", "specs": [f"{DIR}/f\u0661:n1:8787"]}, None),  # a digit, but not an ASCII one
    ({"control": "/c", "specs": [f"{DIR}/f1"]}, None),
    ({"control": "/c", "specs": [f"{DIR}/f:n1:8888", None]}, None),
    ({"control": "c", "spec": f"{DIR}/f:localhost:8888"}, None),  # relative
    # a forward the run did not add: only its own socket, in its own directory, proves it did
    ({"control": "/c", "spec": "127.0.0.1:8889:localhost:8888"}, None),
    ({"control": "/c", "spec": "/tmp/jt-other123/f:localhost:8888"}, None),
    ({"control": "/c", "spec": f"{DIR}/a:localhost:8888"}, None),
    ({"control": "/c", "spec": f"{DIR}/f\n:localhost:8888"}, None),
    ({"control": "/c\n", "spec": f"{DIR}/f:localhost:8888"}, None),
    ({"control": "/c", "spec": 8889}, None),
    (["/c", f"{DIR}/f:localhost:8888"], None),
])
def test_parse_shared_forward(value, found):
    """The registry's word for the forward a dead run left on the user's master is checked."""
    assert sd.parse_shared_forward(value, DIR) == found


def test_build_cancel_argv_names_the_master_and_nothing_else():
    assert sd.build_cancel_argv("ssh", "/home/u/.ssh/cm-1afc", f"{DIR}/f:localhost:8888") == [
        "ssh", "-F", "none", "-S", "/home/u/.ssh/cm-1afc", "-o", "ControlMaster=no", "-o", "ProxyCommand=false",
        "-o", "BatchMode=yes", "-O", "cancel", "-L", f"{DIR}/f:localhost:8888", "x"]
