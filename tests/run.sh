#!/bin/sh
# tests/run.sh - THE test command: ./tests/run.sh [pytest args...]
#
# Makes a fresh Debian machine ready (as root) and runs pytest:
#   1. apt-installs what the fixtures need, only when something is missing;
#   2. keeps a venv with the test dependencies, reinstalled only when
#      pyproject.toml changed since the last successful install;
#   3. keeps a venv with pytest for each other Python the unit tests run under
#      (tests/pythons.py says which);
#   4. execs pytest from the repo root, so its exit code (5 = no tests
#      collected included) is the script's exit code.
# A second run with everything in place costs well under a second of set-up.
#
# Environment: JT_TEST_VENV  venv location (default /opt/jupyter-tunnel-test).
# It must be executable by the non-root test users, who run Jupyter from it:
# anything under /root (0700) is not.
#              JT_SETUP_ONLY=1  stop after the set-up (tests/demo.sh).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${JT_TEST_VENV:-/opt/jupyter-tunnel-test}
# Debian's own Python: a pyenv/conda Python may live where test users can't go
py=/usr/bin/python3

say() { printf '[tests/run.sh] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it creates test users and starts sshd)"

# run "$@" quietly; on failure show the tail of its output and stop
quiet() {
    log=$(mktemp /tmp/jt-run.XXXXXX)
    if "$@" >"$log" 2>&1; then
        rm -f "$log"
    else
        rc=$?
        say "command failed ($rc): $*"
        tail -n 40 "$log" >&2
        rm -f "$log"
        exit "$rc"
    fi
}

# --- 1. system packages -------------------------------------------------------
missing=
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 \
    || missing="$missing openssh-client"
command -v sshpass >/dev/null 2>&1 || missing="$missing sshpass"
# login shells the discovery command must survive (tests/test_servers.py)
command -v tcsh >/dev/null 2>&1 || missing="$missing tcsh"
command -v fish >/dev/null 2>&1 || missing="$missing fish"
command -v pgrep >/dev/null 2>&1 || missing="$missing procps"
# network namespaces of the multi-host cluster (tests/netns.py)
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
# two-factor logins (tests/test_2fa.py): sshd's PAM with pam_google_authenticator's TOTP
# codes, which the tests compute with oathtool
command -v oathtool >/dev/null 2>&1 || missing="$missing oathtool"
dpkg-query -W -f='${Status}' libpam-google-authenticator 2>/dev/null | grep -q 'ok installed' \
    || missing="$missing libpam-google-authenticator"
# the real browser of tests/test_browser.py (driven by Playwright from the venv)
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x "$py" ] || missing="$missing python3"
# Debian splits ensurepip (needed by `python3 -m venv`) into python3-venv
{ [ -x "$py" ] && "$py" -c 'import ensurepip' >/dev/null 2>&1; } || missing="$missing python3-venv"
# the real clusters of tests/cluster.py (jupyter_node.py): Son of Grid Engine, Slurm + munge
for pkg in gridengine-master gridengine-exec gridengine-client slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing="$missing $pkg"
done
case "$missing" in
*gridengine*)
    # gridengineconfig=true: the package sets up the cell "default" with this host as
    # qmaster (tests/cluster.py fixes the host names and starts the daemons itself)
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $(hostname)
EOF
    ;;
esac
if [ -n "$missing" ]; then
    say "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # the packages' daemons (sshd, sge_*, slurm*, munged) must not start on install: the
    # tests start the ones they need, configured for them (a container has this file already)
    policy=/usr/sbin/policy-rc.d made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    quiet apt-get update -q
    # shellcheck disable=SC2086  # word splitting of the package list is wanted
    quiet apt-get install -y -q --no-install-recommends $missing
    if [ -n "$made_policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi

# --- 2. the test venv ---------------------------------------------------------
stamp="$venv/.jupyter-tunnel-test-stamp"
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating venv $venv"
    rm -rf "$venv"
    quiet "$py" -m venv "$venv"
    rm -f "$stamp"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    say "installing test dependencies into $venv (pyproject.toml changed)"
    # builds the project too, so a broken pyproject.toml fails here, loudly
    quiet "$venv/bin/pip" install --disable-pip-version-check -q "$repo[test]"
    # ...but the tests use this checkout (pytest's pythonpath = ["."]) and run
    # the scripts from it: an installed copy would go stale at the next edit
    # and could shadow the checkout in a subprocess, so remove it
    quiet "$venv/bin/pip" uninstall --disable-pip-version-check -y -q jupyter-tunnel
    printf '%s\n' "$want" >"$stamp"
fi
# notebook < 7 (nbserver-*.json, notebook_dir, port 0) cannot share a venv with
# jupyter_server 2 / notebook 7: it gets its own, for tests/test_servers.py
nb6=${JT_TEST_NB6_VENV:-/opt/jupyter-tunnel-test-nb6}
if ! "$nb6/bin/python" -c 'import notebook, sys; sys.exit(notebook.version_info[0] >= 7)' >/dev/null 2>&1; then
    say "creating venv $nb6 with notebook < 7"
    rm -rf "$nb6"
    quiet "$py" -m venv "$nb6"
    quiet "$nb6/bin/pip" install --disable-pip-version-check -q "notebook<7"
fi

# --- 3. the other Pythons -------------------------------------------------------
# The project says Python >= 3.9: tests/test_pythons.py runs the unit tests under the
# oldest supported Python and the newest one on the machine (pyenv installs them on these
# machines), each from a small venv with pytest made here; jupyter_node.py's under 3.6 too
# (the head node's python3), with the last pytest for 3.6.  A missing interpreter is not
# an install step's business: that test fails and says so.
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for version in $(JT_PYENV_ROOT="$pyenv_root" "$py" "$repo/tests/pythons.py" --versions); do
    unit="/opt/jupyter-tunnel-unit-$version"
    if ! "$unit/bin/python" -c 'import pytest' >/dev/null 2>&1; then
        say "creating venv $unit with pytest for Python $version"
        rm -rf "$unit"
        quiet "$pyenv_root/versions/$version/bin/python3" -m venv "$unit"
        pip_pin=$("$py" "$repo/tests/pythons.py" --pip "$version")
        [ -z "$pip_pin" ] || quiet "$unit/bin/pip" install --disable-pip-version-check -q "$pip_pin"
        quiet "$unit/bin/pip" install --disable-pip-version-check -q \
            "$("$py" "$repo/tests/pythons.py" --pytest "$version")" "tomli; python_version < '3.11'"
    fi
done

# --- 4. run -------------------------------------------------------------------
# tests/demo.sh wants the set-up only
[ -z "${JT_SETUP_ONLY:-}" ] || exit 0
cd "$repo"
exec "$venv/bin/python" -m pytest "$@"
