"""Integration tests: the README's shell recipes, run as written, on the real sshd and Jupyter.

The recipe is taken from README.md itself (only ``-F`` with the fixtures' ssh config is added
after the command name), so a change that breaks it, in the tool or in the README, fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import alive, wait_for
from tunnelrun import SCRIPT, get_status

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parent.parent / "README.md"

RECIPE_RE = re.compile(r"`(exec 3< <\(jupyter-tunnel [^`]*)`")


def test_script_recipe_reads_the_url_while_the_tunnel_keeps_running(sshd, jtuser_server, registry, shutdown):
    [recipe] = RECIPE_RE.findall(README.read_text(encoding="utf-8"))
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(SCRIPT))} -F {shlex.quote(str(sshd.config))}"
    script = recipe.replace("jupyter-tunnel", command, 1) + '; printf "%s %s\\n" "$!" "$url"'
    tmp = tempfile.mkdtemp(prefix="jtt-", dir="/tmp")
    env = dict(os.environ, TMPDIR=tmp, NO_COLOR="1", JUPYTER_TUNNEL_REGISTRY=registry)
    env.pop("SSH_AUTH_SOCK", None)
    pid = 0
    # the tunnel's stderr goes to a file: a pipe would stay open as long as the tunnel runs
    with tempfile.TemporaryFile("w+") as stderr:
        try:
            # bash returns once the URL is read: the tunnel goes on in the background
            done = subprocess.run(["bash", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=stderr, text=True, env=env, timeout=60)
            stderr.seek(0)
            said = stderr.read()
            assert done.returncode == 0, said
            pid_text, url = done.stdout.split()
            pid = int(pid_text)
            assert url.startswith("http://localhost:") and f"token={jtuser_server.token}" in url, said
            assert alive(pid), said
            assert get_status(url)[0] == 200

            # Quick start's "close them all"
            stopped = shutdown()
            assert stopped.returncode == 0, stopped.stderr
            assert re.search(rf"^Info: Closed the tunnel localhost:\d+ -> .* \(pid {pid}\)\.$", stopped.stderr, re.M)
            assert not alive(pid)
            assert os.listdir(registry) == [] and os.listdir(tmp) == []
        finally:
            if pid and alive(pid):
                os.kill(pid, signal.SIGINT)
                wait_for(lambda: not alive(pid), 15, what="the tunnel to stop")
            shutil.rmtree(tmp, ignore_errors=True)
