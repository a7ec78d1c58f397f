"""Unit tests of jupyter_tunnel's pure parts, by tables: no network, no processes."""

from __future__ import annotations

import json

import pytest

import jupyter_node as jn
import jupyter_tunnel as jt

# Real runtime files (tokens trimmed), from ../shared/notes/jupyter-servers.md.
JPSERVER = {
    "base_url": "/", "hostname": "localhost", "password": False, "pid": 8818, "port": 44729,
    "root_dir": "/tmp/w", "secure": False, "sock": "", "token": "5d24abc",
    "url": "http://localhost:44729/", "version": "2.21.1",
}
NBSERVER = {
    "base_url": "/", "hostname": "localhost", "notebook_dir": "/home/u/nb", "password": False,
    "pid": 4242, "port": 8890, "secure": False, "sock": "", "token": "tok6",
    "url": "http://localhost:8890/",
}
SOCKET = dict(JPSERVER, port=0, sock="/tmp/x.sock", url="http+unix://%2Ftmp%2Fx.sock/", pid=77)
PORT0 = dict(NBSERVER, port=0, url="http://localhost:0/", pid=99)
ALL_IFACES = dict(NBSERVER, hostname="0.0.0.0", url="http://0.0.0.0:18931/", port=18931, pid=5)
BASE_URL = dict(JPSERVER, base_url="/jupyter/", url="http://localhost:44729/jupyter/", pid=8)
FQDN = dict(JPSERVER, hostname="node1", url="http://node1:8888/", port=8888, pid=9)


def block(path: str, info: dict | str, cmd: str = "/venv/bin/python /venv/bin/jupyter-lab") -> str:
    """Discovery output for one runtime file, as the remote script prints it."""
    text = info if isinstance(info, str) else json.dumps(info)
    return f"{jt.MARK} file {path}\n{jt.MARK} cmd {cmd}\n{text}\n\n{jt.MARK} end\n"


@pytest.mark.parametrize("values, hosts", [
    (["srv"], ("srv",)),
    (["gw", "srv"], ("gw", "srv")),
    (["gw head srv"], ("gw", "head", "srv")),  # the original's space-separated list
    (["gw,head", "u@srv:2222"], ("gw", "head", "u@srv:2222")),
    (["a", "b", "c", "d"], ("a", "b", "c", "d")),
])
def test_parse_hosts(values, hosts):
    assert jt.parse_hosts(values).hosts == hosts


@pytest.mark.parametrize("values", [[""], [" , "], ["-oProxyCommand=x"]])
def test_parse_hosts_rejects(values):
    with pytest.raises(jt.TunnelError):
        jt.parse_hosts(values)


@pytest.mark.parametrize("host, argv", [
    ("srv", ["srv"]),
    ("user@srv", ["user@srv"]),
    ("srv:2222", ["ssh://srv:2222"]),
    ("user@srv:2222", ["ssh://user@srv:2222"]),
    ("fe80::1", ["fe80::1"]),  # an IPv6 address is not host:port
])
def test_build_destination(host, argv):
    assert jt.build_destination(host) == argv


@pytest.mark.parametrize("hosts, jump", [
    (("srv",), None),
    (("gw", "srv"), "gw"),
    (("gw", "head", "srv"), "gw,head"),
    (("a", "b", "c", "srv"), "a,b,c"),
])
def test_build_master_argv(hosts, jump):
    argv = jt.build_master_argv("/usr/bin/ssh", "/t/cfg", "/t/c", jt.Route(hosts))
    assert argv[:8] == ["/usr/bin/ssh", "-F", "/t/cfg", "-M", "-S", "/t/c", "-N", "-T"]
    assert argv[-1] == "srv"
    assert "ControlPersist=no" in argv
    if jump is None:
        assert "-J" not in argv
    else:
        assert argv[argv.index("-J") + 1] == jump
    assert "-A" not in argv  # ProxyJump needs no agent forwarding: never hand it to a gateway


def test_master_forwards_the_agent_only_for_a_node():
    plain = jt.build_master_argv("ssh", "cfg", "c", jt.Route(("gw", "head")))
    node = jt.build_master_argv("ssh", "cfg", "c", jt.Route(("gw", "head"), "node1"))
    assert "ForwardAgent=yes" not in plain
    assert node[node.index("ForwardAgent=yes") - 1] == "-o"


@pytest.mark.parametrize("route, command, stdin", [
    (jt.Route(("srv",)), f"sh -c '{jt.build_discovery_script(one_line=True)}'", ""),
    (jt.Route(("gw", "head"), "node1"), f"echo {jt.MARK} head; ssh -o BatchMode=yes -T node1 sh -s",
     jt.DISCOVERY_SCRIPT),
    (jt.Route(("head",), "node 1;x"), f"echo {jt.MARK} head; ssh -o BatchMode=yes -T 'node 1;x' sh -s",
     jt.DISCOVERY_SCRIPT),
])
def test_build_discovery_command(route, command, stdin):
    assert jt.build_discovery_command(route) == (command, stdin)


def test_build_mux_argv_never_becomes_master_nor_logs_in():
    argv = jt.build_mux_argv("ssh", "cfg", "/t/c", jt.Route(("gw", "srv:22")), "-O", "forward")
    assert argv == ["ssh", "-F", "cfg", "-S", "/t/c", "-o", "ControlMaster=no", "-o", "ProxyCommand=false", "-o", "BatchMode=yes", "-O", "forward",
                    "ssh://srv:22"]


@pytest.mark.parametrize("user_config, options, agent, password, first, included", [
    (None, [], False, False, None, "~/.ssh/config"),
    ("/etc/x.cfg", ["Port=2222"], True, False, "Port 2222", '"/etc/x.cfg"'),
    (None, ["User alice", "Compression=yes"], False, False, "User alice", "~/.ssh/config"),
    (None, ["User alice"], False, True, "NumberOfPasswordPrompts 1", "~/.ssh/config"),
])
def test_build_ssh_config(user_config, options, agent, password, first, included):
    lines = jt.build_ssh_config(user_config, options, agent, password).splitlines()
    body = [line for line in lines if not line.startswith("#")]
    if first:
        assert body[0] == first  # -o options come first: ssh keeps the first value it reads
    assert f"Include {included}" in body
    assert body[-1] == "Include /etc/ssh/ssh_config"
    assert body.index(f"Include {included}") < body.index("ServerAliveInterval 10")
    assert ("AddKeysToAgent yes" in body) == agent


@pytest.mark.parametrize("info, source, cmd, expect", [
    (JPSERVER, "/r/jpserver-8818.json", "python jupyter-lab",
     dict(pid=8818, port=44729, host="localhost", token="5d24abc", root_dir="/tmp/w", version="2.21.1", app="lab")),
    (NBSERVER, "/r/nbserver-4242.json", "python /v/bin/jupyter-notebook",
     dict(pid=4242, port=8890, root_dir="/home/u/nb", version="", app="notebook")),
    (SOCKET, "/r/jpserver-77.json", "jupyter-server", dict(port=0, sock="/tmp/x.sock", app="server")),
    (PORT0, "/r/nbserver-99.json", "", dict(port=0, app="notebook")),
    (ALL_IFACES, "/r/nbserver-5.json", "", dict(host="0.0.0.0", port=18931)),
    (BASE_URL, "/r/jpserver-8.json", "python -m jupyterlab", dict(base_url="/jupyter/", app="lab")),
    (dict(JPSERVER, base_url="/x"), "", "", dict(base_url="/x/")),
    (dict(JPSERVER, secure=True), "", "", dict(secure=True)),
])
def test_parse_server(info, source, cmd, expect):
    server = jt.parse_server(info, source, cmd)
    for key, value in expect.items():
        assert getattr(server, key) == value, key


def test_parse_discovery_reads_blocks_and_ignores_noise():
    output = (
        "Welcome from .bashrc\n"
        + block("/r/jpserver-8818.json", JPSERVER)
        + f"{jt.MARK} stale /r/jpserver-1.json\n"
        + block("/r/nbserver-4242.json", NBSERVER, "python jupyter-notebook")
        + block("/other/jpserver-8818.json", JPSERVER)  # the same file through another dir rule
    )
    servers, warnings = jt.parse_discovery(output)
    # sorted by port, so that --list's numbers mean the same to --pick
    assert [(s.pid, s.app) for s in servers] == [(4242, "notebook"), (8818, "lab")]
    assert warnings == []


def test_parse_discovery_truncated_file_is_a_warning():
    output = block("/r/jpserver-1.json", '{"port": 88') + block("/r/jpserver-8818.json", JPSERVER)
    servers, warnings = jt.parse_discovery(output)
    assert [s.pid for s in servers] == [8818]
    assert warnings == ["skipping unreadable Jupyter runtime file /r/jpserver-1.json"]


@pytest.mark.parametrize("ports_line, port", [
    ("99 18931", 18931),  # notebook 6 --port=0: the pid's listening port is the server's
    ("99 18931 18931", 18931),  # IPv4 and IPv6 sockets on one port
    ("99", 0),  # nothing found (no /proc, no lsof): left at 0, said "port ?"
])
def test_parse_discovery_port_zero(ports_line, port):
    output = block("/r/nbserver-99.json", PORT0, "python jupyter-notebook") + f"{jt.MARK} ports {ports_line}\n"
    [server], _ = jt.parse_discovery(output)
    assert server.port == port
    assert server.describe().startswith(f"port {port or '?'}  notebook (notebook < 7)")


def test_parse_discovery_server_list_fallback():
    output = f"{jt.MARK} list\n{json.dumps(JPSERVER)}\n{json.dumps(BASE_URL)}\n{jt.MARK} end\n"
    servers, _ = jt.parse_discovery(output)
    assert [s.pid for s in servers] == [8, 8818]


@pytest.mark.parametrize("port, directory, pids", [
    (None, None, [8818, 4242]),
    (8890, None, [4242]),
    (None, "/tmp", [8818]),
    (None, "nb", [4242]),
    (1, None, []),
    (44729, "nb", []),
])
def test_select_servers(port, directory, pids):
    servers = [jt.parse_server(JPSERVER), jt.parse_server(NBSERVER)]
    assert [s.pid for s in jt.select_servers(servers, port, directory)] == pids


def test_a_missing_program_is_a_tunnel_error(monkeypatch):
    """jupyter_node's which_or_fail, failing with this tool's error and exit code."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(jt.TunnelError) as failed:
        jn.which_or_fail("ssh", "the OpenSSH client", jt.TunnelError)
    assert (str(failed.value), failed.value.code) == ("ssh not found in PATH (the OpenSSH client)", jt.EXIT_MISSING)
    with pytest.raises(jn.NodeError) as failed:
        jn.which_or_fail("qrsh", "Grid Engine's job launcher")
    assert (str(failed.value), failed.value.code) == ("qrsh not found in PATH (Grid Engine's job launcher)",
                                                      jn.EXIT_MISSING)


def test_backoff_delays():
    import itertools

    assert list(itertools.islice(jt.backoff_delays(), 9)) == [0, 1, 2, 4, 8, 16, 30, 30, 30]


SAME = jt.parse_server(JPSERVER)
RESTARTED = jt.parse_server(dict(JPSERVER, pid=9000, port=44730, token="new"))
OTHER = jt.parse_server(NBSERVER)


@pytest.mark.parametrize("servers, expect", [
    ([OTHER, SAME], SAME),  # still there: the same one, even among others
    ([RESTARTED], RESTARTED),  # restarted elsewhere, alone: followed
    ([RESTARTED, OTHER], None),  # ambiguous: not followed
    ([], None),
])
def test_follow_server(servers, expect):
    assert jt.follow_server(servers, SAME) == expect


def test_build_ssh_config_keepalive_and_batch():
    body = jt.build_ssh_config(None, [], keepalive=4, batch=True).splitlines()
    assert body[1] == "BatchMode yes" and "ServerAliveInterval 4" in body


@pytest.mark.parametrize("first, expect", [
    (8888, (8888, 8987)),
    (65530, (65530, 65535)),
    (0, (1, 100)),
])
def test_candidate_ports(first, expect):
    ports = jt.candidate_ports(first)
    assert (ports[0], ports[-1]) == expect


@pytest.mark.parametrize("info, spec", [
    (JPSERVER, "/tmp/jt-x/f:localhost:44729"),
    (ALL_IFACES, "/tmp/jt-x/f:127.0.0.1:18931"),
    (FQDN, "/tmp/jt-x/f:node1:8888"),
    (dict(JPSERVER, hostname="::", url="http://[::]:44729/"), "/tmp/jt-x/f:[::1]:44729"),
    (dict(JPSERVER, hostname="fe80::2"), "/tmp/jt-x/f:[fe80::2]:44729"),
    (SOCKET, "/tmp/jt-x/f:/tmp/x.sock"),  # unix socket to unix socket: -L semantics kept
])
def test_build_forward_spec(info, spec):
    assert jt.build_forward_spec("/tmp/jt-x/f", jt.forward_target(jt.parse_server(info))) == spec


@pytest.mark.parametrize("info, spec", [
    (FQDN, "/d/f:node1:8888"),
    (ALL_IFACES, "/d/f:n7:18931"),  # every interface: the node's name reaches it
])
def test_build_forward_spec_through_head_to_node(info, spec):
    assert jt.build_forward_spec("/d/f", jt.forward_target(jt.parse_server(info), node="n7")) == spec


@pytest.mark.parametrize("info", [JPSERVER, dict(JPSERVER, hostname="127.0.0.1"), SOCKET])
def test_node_server_on_loopback_or_socket_is_an_error(info):
    with pytest.raises(jt.TunnelError, match="--ip=\\$\\(hostname --fqdn\\)"):
        jt.forward_target(jt.parse_server(info), node="n7")


@pytest.mark.parametrize("info, url", [
    (JPSERVER, "http://localhost:9000/?token=5d24abc"),
    (BASE_URL, "http://localhost:9000/jupyter/?token=5d24abc"),
    (dict(JPSERVER, token=""), "http://localhost:9000/"),
    (dict(JPSERVER, secure=True), "https://localhost:9000/?token=5d24abc"),
    (dict(JPSERVER, token="a+b/c"), "http://localhost:9000/?token=a%2Bb%2Fc"),
])
def test_build_url(info, url):
    assert jt.build_url(9000, jt.parse_server(info)) == url


@pytest.mark.parametrize("lines, reason", [
    (["ssh: connect to host 127.0.0.4 port 1: Connection refused"],
     "127.0.0.4 refuses connections on port 1 (Connection refused): no ssh server listens there"),
    (["Warning: Permanently added 'x' (ED25519) to the list of known hosts.",
      "jtuser@127.0.0.1: Permission denied (password)."],
     "jtuser@127.0.0.1: Permission denied (password)."),
    ([], "ssh gave no reason"),
    (["channel 0: open failed: connect failed: Connection refused", "stdio forwarding failed",
      "kex_exchange_identification: Connection closed by remote host",
      "Connection closed by UNKNOWN port 65535"],
     # the banner exchange that failed behind it follows from the jump's failure: not said
     "channel 0: open failed: connect failed: Connection refused; stdio forwarding failed"),
])
def test_parse_ssh_error(lines, reason):
    assert jt.parse_ssh_error(lines) == reason


def test_parse_ssh_error_of_a_killed_ssh():
    assert jt.parse_ssh_error([], -9) == "ssh was killed by SIGKILL"
    assert jt.parse_ssh_error(["Connection closed"], -9) == "Connection closed"


def test_discovery_script_survives_any_login_shell():
    """One line in single quotes: no ' ! or newline (csh), no double backslash (fish)."""
    line = jt.build_discovery_script(one_line=True)
    assert not set("'!\n") & set(line)
    assert "\\\\" not in line


@pytest.mark.parametrize("one_line", [False, True])
def test_discovery_script_is_posix_sh(one_line):
    """The script parses under dash (Debian's sh), the strictest common /bin/sh."""
    import shutil
    import subprocess

    sh = shutil.which("dash") or "/bin/sh"
    script = jt.build_discovery_script(one_line=one_line)
    done = subprocess.run([sh, "-n"], input=script.encode(), capture_output=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv, message", [
    (["-s"], "expected at least one argument"),
    ([], "no host given: name them with -s, in order, e.g. jupyter-tunnel -s gw.example.org server.internal"),
    (["-J", "gw", "srv"], "-J is ssh's option: give jupyter-tunnel the whole chain with -s, in order "
                          "(ssh -J gw srv is jupyter-tunnel -s gw srv)"),
    # nothing asked for is silently ignored: one rule for every option of a started server...
    (["-s", "srv", "--pre", "module load x"], "--pre goes with --start or --submit (no server is started "
                                              "without them)"),
    (["-s", "srv", "--conda-env", "e"], "--conda-env goes with --start or --submit"),
    (["-s", "srv", "--jupyter", "/opt/j"], "--jupyter goes with --start or --submit"),
    (["-s", "srv", "--root-dir", "/d"], "--root-dir goes with --start or --submit"),
    (["-s", "srv", "-t", "lab"], "-t/--type goes with --start or --submit"),
    # ...and of a scheduler job
    (["-s", "srv", "--python", "python3.9"], "--python goes with a scheduler job: --submit, -n auto or --job"),
    (["-s", "srv", "--warn-before", "5"], "--warn-before goes with a scheduler job"),
    (["-s", "srv", "--scheduler", "slurm"], "--scheduler goes with a scheduler job"),
    (["-s", "srv", "--list", "--stop-server"], "--stop-server cannot go with --list: --list only lists"),
    (["-s", "srv", "--stop", "--list"], "--stop cannot go with --list: it stops a running server, and opens no"),
    (["-s", "srv", "--stop", "--start"], "--stop cannot go with --start"),
    (["-s", "head", "--stop", "--submit"], "--stop cannot go with --submit"),
    (["-s", "srv", "--stop", "--stop-server"], "--stop cannot go with --stop-server"),
    (["-s", "srv", "--bogus"], "unrecognized arguments: --bogus"),
    (["-s", "srv", "--local-port", "70000"], "argument --local-port: expected a whole number from 1 to 65535"),
    (["-s", "srv", "--timeout", "0"], "argument -w/--timeout: expected seconds, more than 0 and at most 86400, not '0'"),
    (["-s", "srv", "--timeout", "nan"], "argument -w/--timeout: expected seconds, more than 0 and at most 86400"),
    (["-s", "srv", "--timeout", "86401"], "argument -w/--timeout: expected seconds, more than 0 and at most 86400"),
    (["-s", "srv", "--check-interval", "-1"],
     "argument --check-interval: expected seconds, more than 0 and at most 3600"),
    (["-s", "srv", "--check-interval", "inf"], "argument --check-interval: expected seconds"),
    (["-s", "srv", "--check-interval", "1e300"], "argument --check-interval: expected seconds"),
    (["-s", "srv", "--keepalive", "0"], "argument --keepalive: expected a whole number from 1 to 3600, not '0'"),
    (["-s", "srv", "--keepalive", "1.5"], "argument --keepalive: expected a whole number from 1 to 3600, not '1.5'"),
    (["-s", "srv", "--max-retries", "0"], "argument --max-retries: expected a whole number from 1 to 1000000"),
    (["-s", "srv", "--pick", "0"], "argument --pick: expected a whole number from 1 to 10000, not '0'"),
    (["-s", "srv", "--port", "65536"], "argument --port: expected a whole number from 1 to 65535"),
    (["-s", "srv", "-b", ""], 'argument -b/--browser: empty browser command: give a program, or "none"'),
    (["-s", "srv", "-b", '"'], "argument -b/--browser: '\"' does not split into words like a shell command: "
                               "no closing quotation"),
    (["-s", "srv", "-o", "User=a\nHost *"], "argument -o/--ssh-option: control characters (a newline, say) "
                                           "are not allowed: 'User=a\\nHost *'"),
    (["-s", "srv", "-F", "/tmp/x\ry"], "argument -F/--ssh-config: control characters"),
    (["-s", "-x"], "expected at least one argument"),
    (["-s", "srv", "--node=-node1"], "invalid host name '-node1'"),
    # values that go into a remote command or the ssh config: refused whole, never cut or split
    (["-s", "gw\nsrv"], "argument -s/--host: control characters (a newline, say) are not allowed: 'gw\\nsrv'"),
    (["-s", "srv", "-n", "node\n1"], "argument -n/--node: control characters"),
    (["-s", "srv", "--start", "--root-dir", "/data\nx"], "argument --root-dir: control characters"),
    (["-s", "srv", "--start", "--jupyter", "jupyter\nrm"], "argument --jupyter: control characters"),
    (["-s", "srv", "--start", "--pre", ". a\nb"], "argument --pre: must be one line (no newline): '. a\\nb'"),
    (["-s", "srv", "--start", "--conda-env", "a\x85b"], "argument --conda-env: must be one line (no newline)"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        jt.main(argv)
    assert exit_info.value.code == jt.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_original_long_options_still_parse():
    args = jt.build_parser().parse_args(["--host", "gw", "srv", "--ssha", "--sshp", "-b", "n"])
    assert (args.host, args.new_agent, args.password, args.browser) == (["gw", "srv"], True, True, "n")


@pytest.mark.parametrize("info, request_text", [
    (JPSERVER, "GET /api/status HTTP/1.0\r\nHost: localhost\r\nAuthorization: token 5d24abc\r\n\r\n"),
    (dict(BASE_URL, token=""), "GET /jupyter/api/status HTTP/1.0\r\nHost: localhost\r\n\r\n"),
])
def test_build_probe_request(info, request_text):
    assert jt.build_probe_request(jt.parse_server(info)) == request_text.encode()


@pytest.mark.parametrize("answer, status", [
    (b"HTTP/1.1 200 OK\r\nServer: TornadoServer\r\n", 200),
    (b"HTTP/1.0 403 Forbidden\r\n", 403),
    (b"", 0),  # closed without a word: the remote end refused the connection
    (b"SSH-2.0-OpenSSH_9.2\r\n", 0),  # not HTTP at all
])
def test_parse_status_line(answer, status):
    assert jt.parse_status_line(answer) == status


# --- text from the remote: validated, escaped --------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ("/home/u/proj", "/home/u/proj"),
    ("é ü 中文 tab-free", "é ü 中文 tab-free"),  # printable Unicode stays as it is
    ("a\nInfo: forged", "a\\nInfo: forged"),  # a forged line stays on this one
    ("x\r\n", "x\\r\\n"),
    ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),  # ANSI: clear screen, set title
    ("\x9b31m", "\\x9b31m"),  # C1: the 8-bit CSI
    ("a\x7fb\x00c\td", "a\\x7fb\\x00c\\td"),  # DEL, NUL, tab
    ("\u202eevil\u2028x", "\\u202eevil\\u2028x"),  # bidi override, line separator
])
def test_escape_text(text, shown):
    assert jn.escape_text(text) == shown
    assert jn.has_control(text) == (text != shown)


def test_say_shows_remote_text_escaped(capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    jt.say("Info", "Jupyter in /w\nError: forged\x1b[8m")
    assert capsys.readouterr().err == "Info: Jupyter in /w\\nError: forged\\x1b[8m\n"


def test_server_table_escapes_the_remote_fields():
    server = jt.parse_server(dict(JPSERVER, root_dir="/w\nInfo: x", version="2\x1b[31m"))
    table = jt.format_server_table([server])
    assert len(table.splitlines()) == 2 and "\x1b" not in table
    assert table.splitlines()[1].endswith("/w\\nInfo: x") and "2\\x1b[31m" in table


@pytest.mark.parametrize("change, reason", [
    (dict(base_url="@otherhost:9/"), "its base_url '@otherhost:9/' is not a path starting with /"),
    (dict(base_url="otherhost/"), "its base_url"),
    (dict(base_url="/a b/"), "its base_url"),
    (dict(base_url="/a\r\nX-Evil: 1/"), "its base_url"),
    (dict(base_url="/a?x=/"), "its base_url"),
    (dict(base_url="/a#/"), "its base_url"),
    (dict(port=float("inf")), "its port inf is not a whole number from 0 to 65535"),  # JSON 1e999
    (dict(port=True), "its port True"),
    (dict(port=8888.0), "its port 8888.0"),
    (dict(port="8888"), "its port '8888'"),
    (dict(port=70000), "its port 70000"),
    (dict(port=-1), "its port -1"),
    (dict(pid=float("inf")), "its pid inf is not a whole number from 1 to"),
    (dict(pid=0), "its pid 0"),
    (dict(pid=None), "its pid None"),
    (dict(hostname="evil host"), "its hostname 'evil host' is not a host name or an IP address"),
    (dict(hostname="a:b:9"), "its hostname"),
    (dict(hostname="[::1"), "its hostname"),
    (dict(hostname="-oProxyCommand=x"), "its hostname"),
    (dict(hostname="h\n"), "its hostname"),
    (dict(sock="/tmp/x\n.sock"), "its sock holds control characters"),
    (dict(token="t\r\nX-Evil: 1"), "its token holds control characters"),
])
def test_parse_server_refuses_what_could_mislead(change, reason):
    with pytest.raises(ValueError) as caught:
        jt.parse_server(dict(JPSERVER, **change))
    assert str(caught.value).startswith(reason)


def test_parse_server_refuses_a_non_object():
    with pytest.raises(ValueError, match="not a JSON object"):
        jt.parse_server([JPSERVER])


@pytest.mark.parametrize("hostname", ["localhost", "node1.cluster.ext", "my_host", "10.1.2.3", "0.0.0.0",
                                      "::", "::1", "[::1]", "fe80::2", "fe80::2%eth0", ""])
def test_parse_server_accepts_host_names_and_addresses(hostname):
    assert jt.parse_server(dict(JPSERVER, hostname=hostname)).host == (hostname or "localhost")


@pytest.mark.parametrize("base_url", ["/", "/jupyter/", "//otherhost/", "/@otherhost:9/", "/a%20b/", "/\\\\x/",
                                      "/café/"])
def test_the_url_always_points_at_localhost(base_url):
    from urllib.parse import urlsplit

    url = urlsplit(jt.build_url(9000, jt.parse_server(dict(JPSERVER, base_url=base_url))))
    assert (url.hostname, url.port, url.username) == ("localhost", 9000, None)
    assert url.path == base_url and url.query == "token=5d24abc"


def test_build_url_keeps_the_host_even_for_an_unchecked_base_url():
    """By construction: even a Server whose base_url was never checked."""
    server = jt.parse_server(JPSERVER)._replace(base_url="@otherhost:9/")
    assert jt.build_url(9000, server) == "http://localhost:9000/@otherhost:9/?token=5d24abc"


@pytest.mark.parametrize("text, warning", [
    ('{"port": 1e999, "pid": 5}',
     "skipping Jupyter runtime file /r/jpserver-5.json: its port inf is not a whole number from 0 to 65535"),
    ('{"port": 8888, "pid": 1e999}',
     "skipping Jupyter runtime file /r/jpserver-5.json: its pid inf is not a whole number from 1 to 2147483647"),
    (json.dumps(dict(JPSERVER, base_url="@otherhost:9/")),
     "skipping Jupyter runtime file /r/jpserver-5.json: its base_url '@otherhost:9/' is not a path starting with /"),
    ("[" * 100000, "skipping unreadable Jupyter runtime file /r/jpserver-5.json"),  # too deep for json
    ("[1, 2]", "skipping Jupyter runtime file /r/jpserver-5.json: it is not a JSON object"),
])
def test_parse_discovery_skips_invalid_files_with_a_warning(text, warning):
    output = block("/r/jpserver-5.json", text) + block("/r/jpserver-8818.json", JPSERVER)
    servers, warnings = jt.parse_discovery(output)
    assert [s.pid for s in servers] == [8818]
    assert warnings == [warning]


@pytest.mark.parametrize("line", ["", "x", "99 x", "99 ²", "99 -1"])
def test_parse_discovery_ignores_a_malformed_ports_line(line):
    output = block("/r/nbserver-99.json", PORT0, "python jupyter-notebook") + f"{jt.MARK} ports {line}\n"
    [server], _ = jt.parse_discovery(output)
    assert server.port == 0


# Real answers to GET /api/status (jupyter_server 2.21.1 and notebook 6.5.7 give the same).
STATUS_200 = (b'HTTP/1.1 200 OK\r\nServer: TornadoServer/6.6.1\r\nContent-Type: application/json\r\n'
              b'Content-Length: 122\r\n\r\n{"connections": 0, "kernels": 0, "last_activity": '
              b'"2026-11-29T07:09:30.851137Z", "started": "2026-11-29T07:09:30.851137Z"}')
STATUS_403 = (b'HTTP/1.1 403 Forbidden\r\nServer: TornadoServer/6.6.1\r\nContent-Type: application/json\r\n'
              b'Content-Length: 40\r\n\r\n{"message": "Forbidden", "reason": null}')


@pytest.mark.parametrize("answer, expect", [
    (STATUS_200, (200, True)),
    (STATUS_403, (403, True)),  # a password server: ready, the page asks for the password
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>It works!</html>", (200, False)),
    (b'HTTP/1.0 200 OK\r\n\r\n{"status": "ok"}', (200, False)),  # JSON, but not Jupyter's
    (b'HTTP/1.0 200 OK\r\n\r\n["started"]', (200, False)),
    (STATUS_200[:-20], (200, False)),  # cut short
    (b"HTTP/1.0 403 Forbidden\r\n\r\n<h1>Forbidden</h1>", (403, False)),
    (b'HTTP/1.0 404 Not Found\r\n\r\n{"message": "Not Found"}', (404, False)),
    (b"HTTP/1.0 200 OK\r\n\r\n" + b"[" * 60000, (200, False)),  # too deep for json: no crash
    (b"", (0, False)),  # closed without a word
    (b"SSH-2.0-OpenSSH_9.2\r\n", (0, False)),
])
def test_parse_probe_answer(answer, expect):
    assert jt.parse_probe_answer(answer) == expect


SRV = jt.Route(("srv",))
NODE = jt.Route(("gw", "head"), "node1")
START = f"{jt.MARK} start\n"
HEAD = f"{jt.MARK} head\n"


@pytest.mark.parametrize("route, code, stdout, stderr, expect", [
    (SRV, 0, START, "", None),
    (NODE, 0, HEAD + START, "", None),
    (SRV, 1, "This account is currently not available.\n", "", (
        jt.EXIT_CONNECT, "the account on srv does not run commands: its login shell refuses them "
                         "(e.g. /bin/false or nologin); it said This account is currently not available.")),
    (SRV, 1, "", "", (jt.EXIT_CONNECT, "the account on srv does not run commands: its login shell refuses "
                                       "them (e.g. /bin/false or nologin); it said nothing (exit code 1)")),
    (SRV, 255, "", "Control socket connect(/t/c): Connection refused\n", (
        jt.EXIT_ERROR, "cannot look for Jupyter servers on srv: Control socket connect(/t/c): Connection refused")),
    (NODE, 1, "This account is currently not available.\n", "", (
        jt.EXIT_CONNECT, "the account on head does not run commands")),
    (NODE, 1, HEAD + "This account is currently not available.\n", "", (
        jt.EXIT_CONNECT, "the account on node1 does not run commands")),
    (NODE, 255, HEAD, "jtuser@node1: Permission denied (publickey).\n", (
        jt.EXIT_CONNECT, "cannot reach node node1 from head: jtuser@node1: Permission denied (publickey).")),
    (SRV, 2, START, "sh: oops\n", (jt.EXIT_ERROR, "cannot look for Jupyter servers on srv: sh: oops")),
])
def test_parse_discovery_failure(route, code, stdout, stderr, expect):
    error = jt.parse_discovery_failure(route, code, stdout, stderr)
    if expect is None:
        assert error is None
    else:
        assert (error.code, str(error)[:len(expect[1])]) == expect


def test_discovery_script_says_first_that_it_runs():
    import subprocess

    done = subprocess.run(["sh", "-c", jt.build_discovery_script(one_line=True)], capture_output=True, text=True,
                          env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"})
    assert done.stdout.splitlines()[0] == f"{jt.MARK} start"


@pytest.mark.parametrize("path, written", [
    ("/etc/x.cfg", '"/etc/x.cfg"'),
    ("/home/a b/ssh config", '"/home/a b/ssh config"'),
    ('/x/c"q', '"/x/c\\"q"'),
    ("/x/c\\q", '"/x/c\\\\\\\\q"'),  # escaped for glob, then for ssh's words
    ("/x/c*q?[", '"/x/c\\\\*q\\\\?\\\\["'),
])
def test_build_include_path(path, written):
    assert jt.build_include_path(path) == written


def test_a_config_path_with_spaces_and_quotes_reaches_ssh(tmp_path):
    """The real ssh reads the generated Include back as the very file (ssh -G connects nowhere)."""
    import subprocess

    directory = tmp_path / "my ssh"
    directory.mkdir()
    user_config = directory / 'c "q\\ *'
    user_config.write_text("Host jt-test-alias\n    Port 2345\n")
    (directory / 'c "q\\ decoy').write_text("Host jt-test-alias\n    Port 1111\n")  # "*" must not match it
    config = tmp_path / "generated"
    config.write_text(jt.build_ssh_config(str(user_config), ["User=alice"]))
    done = subprocess.run(["ssh", "-G", "-F", str(config), "jt-test-alias"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    settings = done.stdout.splitlines()
    assert "port 2345" in settings and "user alice" in settings


@pytest.mark.parametrize("text", ["", " ", "\"", "'unbalanced", "a 'b"])
def test_browser_option_refuses_what_does_not_split(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        jt.browser_option(text)


@pytest.mark.parametrize("text", ["firefox", "none", "'/opt/My Browser/run' --new-tab"])
def test_browser_option_accepts_commands(text):
    assert jt.browser_option(text) == text


def test_verbose_is_counted():
    assert jt.build_parser().parse_args(["-s", "srv"]).verbose == 0
    assert jt.build_parser().parse_args(["-s", "srv", "-v"]).verbose == 1
    assert jt.build_parser().parse_args(["-vv", "-s", "srv"]).verbose == 2


@pytest.mark.parametrize("argv, hosts", [
    (["-s", "gw", "-s", "srv"], ("gw", "srv")),  # repeated, in order, as ssh users expect
    (["-s", "gw", "head", "-s", "srv"], ("gw", "head", "srv")),
    (["-s", "gw,head", "srv"], ("gw", "head", "srv")),
])
def test_repeated_s_options_all_count(argv, hosts):
    assert jt.parse_hosts(jt.build_parser().parse_args(argv).host).hosts == hosts


@pytest.mark.parametrize("on_node, next_step", [
    (False, "no Jupyter server is running on srv: add --start to start one (on a cluster's head node, --submit "
            "starts one as a scheduler job)"),
    (True, "no Jupyter server is running on srv: start one with --submit (without -n NODE) or jupyter-node on "
           "the head"),
])
def test_no_server_names_the_next_step(on_node, next_step):
    with pytest.raises(jt.TunnelError) as error:
        jt.choose_server([], "srv", on_node=on_node)
    assert (str(error.value), error.value.code) == (next_step, jt.EXIT_NO_SERVER)


@pytest.mark.parametrize("answer, token_sent, verdict", [
    (STATUS_200, True, jt.READY_ANSWER),
    (STATUS_200, False, jt.READY_ANSWER),
    (STATUS_403, False, jt.READY_ANSWER),  # a password server: the page asks for the password
    (STATUS_403, True, jt.REFUSED_TOKEN),  # the runtime file's token refused: not that server's file
    (b"HTTP/1.0 403 Forbidden\r\n\r\n<h1>Forbidden</h1>", True, jt.NOT_JUPYTER),
    (b"HTTP/1.0 403 Forbidden\r\n\r\n<h1>Forbidden</h1>", False, jt.NOT_JUPYTER),
    (b"HTTP/1.0 200 OK\r\n\r\n<html>It works!</html>", True, jt.NOT_JUPYTER),
    (b"", True, jt.NO_ANSWER),  # closed without a word
    (None, True, jt.NO_ANSWER),  # nothing in time
])
def test_probe_verdict(answer, token_sent, verdict):
    parsed = None if answer is None else jt.parse_probe_answer(answer)
    assert jt.probe_verdict(parsed, token_sent) == verdict


def test_help_groups_the_options_and_ends_with_three_examples():
    text = jt.build_parser().format_help()
    # Python < 3.10's argparse calls the first group "optional arguments"
    headings = [line.replace("optional arguments:", "options:") for line in text.splitlines()
                if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["options:", "connection (one login per host for the whole run):", "choosing a server:",
                        "the browser and the local port:", "lifetime: waiting, reconnecting, closing:",
                        "starting a server (--start):", "a cluster job (--submit, -n auto, --job):", "examples:"]
    examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(":", 1)[0].strip() for line in examples] == [
        "through a gateway", "start one if none runs", "a cluster job"]
