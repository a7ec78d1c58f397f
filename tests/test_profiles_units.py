"""Unit tests of the named profiles (issue 24): the INI files, their expansion into a command
line, the order of the profile's options and the user's, and every error's text with its
file and line.  No ssh, no root: the files live in the test's own directories, the site's
one included (jupyter_node.SITE_PROFILES is pointed there)."""

from __future__ import annotations

import argparse
import configparser
import os
import shlex
import stat
from pathlib import Path

import pytest

import jupyter_node as jn
import jupyter_tunnel as jt


@pytest.fixture(autouse=True)
def files(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the site's file, the user's file), neither written yet, in the test's own directories."""
    site = tmp_path / "etc" / "jupyter-tunnel" / "profiles.ini"
    site.parent.mkdir(parents=True)
    site.parent.chmod(0o755)
    monkeypatch.setattr(jn, "SITE_PROFILES", str(site))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    user = tmp_path / "config" / "jupyter-tunnel" / "profiles.ini"
    user.parent.mkdir(parents=True)
    return site, user


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def expand(text: str, name: str = "hpc", *rest: str, tool=jt, left_out=jt.NODE_KEYS) -> list[str]:
    """The command line ``tool NAME REST`` stands for, with ``text`` the user's file."""
    path = write(Path(os.environ["XDG_CONFIG_HOME"]) / "jupyter-tunnel" / "profiles.ini", text)
    _, argv, _ = jn.expand_profile([name, *rest], tool.build_parser(), [(str(path), False)], left_out)
    return argv


def error_of(text: str, name: str = "hpc", *rest: str) -> str:
    """The ProfileError's message for ``jupyter-tunnel NAME REST`` with ``text`` the user's file."""
    with pytest.raises(jn.ProfileError) as caught:
        expand(text, name, *rest)
    return str(caught.value)


# ---------------------------------------------------------------- the file and its expansion

HPC = """\
# the example of docs/profiles.md
[hpc]
host = me@gw.uni.edu me@head
submit = yes
queue = short
resource =
    mem=8G
    h_rt=4:00:00
pre = module load anaconda
conda-env = lab
"""


def test_a_profile_is_a_command_line():
    assert expand(HPC) == ["--host=me@gw.uni.edu", "--host=me@head", "--submit", "--queue=short",
                           "--resource=mem=8G", "--resource=h_rt=4:00:00", "--pre=module load anaconda",
                           "--conda-env=lab"]
    args = jt.build_parser().parse_args(expand(HPC))
    assert (args.host, args.submit, args.queue, args.resource, args.pre, args.conda_env) == \
        (["me@gw.uni.edu", "me@head"], True, "short", ["mem=8G", "h_rt=4:00:00"], ["module load anaconda"], "lab")


@pytest.mark.parametrize("text, argv", [
    # -s (nargs="+"): several hosts on one line, or one per line, or both
    ("host = gw head", ["--host=gw", "--host=head"]),
    ("host =\n  gw\n  head", ["--host=gw", "--host=head"]),
    ("host = gw\n  mid head", ["--host=gw", "--host=mid", "--host=head"]),
    # an append option: one value per line, spaces kept
    ("ssh-option =\n  User=me\n  ProxyCommand=nc -X 5 %h %p", ["--ssh-option=User=me",
                                                                "--ssh-option=ProxyCommand=nc -X 5 %h %p"]),
    # no interpolation: "%" stays; no inline comments: "#" and ";" stay in the value
    ("pre = echo 50% done # not a comment ; nor this", ["--pre=echo 50% done # not a comment ; nor this"]),
    # a value starting with "-" stays a value (as --resource="-pe smp 4" on the command line)
    ("resource = -pe smp 4", ["--resource=-pe smp 4"]),
    # every alias of an option is a key
    ("sshp = yes", ["--sshp"]), ("pass = yes", ["--pass"]), ("ssha = on", ["--ssha"]),
    # a comment line or an empty line ends a multi-line value; its keys are the section's again
    ("pre =\n  a\n# note\nqueue = q", ["--pre=a", "--queue=q"]),
    ("pre =\n  a\n\nqueue = q", ["--pre=a", "--queue=q"]),
    # spaces around "=" and the key's own indentation do not matter
    ("  queue=q", ["--queue=q"]),
])
def test_values(text, argv):
    assert expand(f"[hpc]\n{text}\n") == argv


@pytest.mark.parametrize("word, given", [
    *[(word, True) for word in ("yes", "Yes", "true", "TRUE", "on", "1")],
    *[(word, False) for word in ("no", "No", "false", "off", "0")],
])
def test_a_flag_takes_configparsers_boolean_words_and_no_is_absent(word, given):
    assert expand(f"[hpc]\nhost = srv\nstart = {word}\n") == ["--host=srv", *(["--start"] if given else [])]


@pytest.mark.parametrize("word, count", [("yes", 1), ("no", 0), ("2", 2), ("0", 0)])
def test_a_counted_flag_takes_a_number_too(word, count):
    assert expand(f"[hpc]\nverbose = {word}\n") == ["--verbose"] * count


def test_the_command_line_adds_to_repeatables_and_overrides_single_options():
    argv = expand(HPC, "hpc", "-s", "node7", "-q", "long", "-r", "mem=32G", "--pre", "module load cuda")
    args = jt.build_parser().parse_args(argv)
    assert args.host == ["me@gw.uni.edu", "me@head", "node7"]
    assert args.queue == "long"  # argparse keeps the last: the user's
    assert args.resource == ["mem=8G", "h_rt=4:00:00", "mem=32G"]
    assert args.pre == ["module load anaconda", "module load cuda"]
    assert argv[-8:] == ["-s", "node7", "-q", "long", "-r", "mem=32G", "--pre", "module load cuda"]


def test_a_word_after_the_profile_is_no_extra_host():
    """The profile's -s values are --host=VALUE each: the user's next word is no host of theirs."""
    argv = expand("[hpc]\nhost = gw head\n", "hpc", "stray")
    with pytest.raises(SystemExit):
        jt.build_parser().parse_args(argv)


def test_keys_as_written_and_not_of_any_case():
    assert error_of("[hpc]\nHost = gw\n") == \
        (f"{os.environ['XDG_CONFIG_HOME']}/jupyter-tunnel/profiles.ini:2: [hpc] unknown key 'Host' "
         "(did you mean 'host'?): the keys are jupyter-tunnel's long options without their dashes")


def test_every_long_option_is_a_key_and_a_new_option_needs_no_code():
    parser = jt.build_parser()
    keys = jn.profile_keys(parser)
    longs = {option[2:] for action in parser._actions for option in action.option_strings if option.startswith("--")}
    assert set(keys) == longs
    assert sorted(key for key, action in keys.items() if action is None) == ["help", "profiles", "version"]
    # an option added later (issue 24's --forward) is a key at once, with its own type's errors
    profile = jn.parse_profiles("[hpc]\nforward =\n  8787\n  6006:7006\n", "f.ini")["hpc"]
    argv = jn.build_profile_argv(profile, parser)
    assert argv == ["--forward=8787", "--forward=6006:7006"]
    assert jt.settings_from(parser.parse_args(["-s", "srv", *argv, "--forward", "8787"])).forwards == \
        ((8787, None), (6006, 7006))  # the profile's and the command line's, each once
    bad = jn.parse_profiles("[hpc]\nforward =\n  8787\n  6006:0\n", "f.ini")["hpc"]
    with pytest.raises(jn.ProfileError, match=r"^f\.ini:4: \[hpc\] forward: expected PORT or PORT:LOCAL, each a "
                                              r"whole number from 1 to 65535, not '6006:0'$"):
        jn.build_profile_argv(bad, parser)


LOCATED = [
    "[a]\nx = 1\ny =\n  2\n  3\n\n[b]\nz = 4",
    "# c\n[a]\n  x = 1\n    2\n; c\ny = 3\n",
    "[a]\nx =\n\ty\n\tz\n[b]\n",
    "[a b]\nx = 1 = 2\ny=\n",
    "\n\n[a]\r\nx = 1\r\n  2\r\n",
]


@pytest.mark.parametrize("text", LOCATED)
def test_the_line_numbers_come_with_configparsers_own_values(text):
    """locate_profile_keys follows configparser's rules: the same sections, keys and values."""
    config = configparser.ConfigParser(delimiters=("=",), interpolation=None, empty_lines_in_values=False,
                                       default_section=jn.NO_DEFAULT_SECTION)
    config.optionxform = str
    config.read_string(text)
    located = jn.parse_profiles(text, "f.ini")
    assert list(located) == config.sections()
    for name, profile in located.items():
        assert list(profile.keys) == list(config[name])
        for key, entry in profile.keys.items():
            assert [value.text for value in entry.values] == [line for line in config[name][key].split("\n") if line]
            lines = text.split("\n")
            assert all(value.text in lines[value.line - 1] for value in entry.values)
            assert lines[entry.line - 1].strip().startswith(key)


def test_the_users_keys_win_and_the_sites_others_stay(files):
    site, user = files
    write(site, "[hpc]\nhost = gw head\nqueue = short\npre = module load site\n[site-only]\nhost = x\n")
    write(user, "[hpc]\nqueue = long\nresource = mem=8G\n[mine]\nhost = y\n")
    paths = jn.profile_paths(dict(os.environ), "/nonexistent")
    profiles, notes = jn.load_profiles(paths)
    assert sorted(profiles) == ["hpc", "mine", "site-only"]
    assert jn.build_profile_argv(profiles["hpc"], jt.build_parser()) == \
        ["--host=gw", "--host=head", "--queue=long", "--pre=module load site", "--resource=mem=8G"]
    assert jn.format_sections(profiles["hpc"]) == f"{site}:1, {user}:1"
    assert notes == [f"Profiles: {site}: read", f"Profiles: {user}: read"]


@pytest.mark.parametrize("environ, windows, paths", [
    ({"XDG_CONFIG_HOME": "/x"}, False, [("/site", True), ("/x/jupyter-tunnel/profiles.ini", False)]),
    ({}, False, [("/site", True), ("/home/me/.config/jupyter-tunnel/profiles.ini", False)]),
    ({"XDG_CONFIG_HOME": "rel"}, False, [("/site", True), ("/home/me/.config/jupyter-tunnel/profiles.ini", False)]),
    ({"APPDATA": "C:\\Users\\me\\AppData\\Roaming"}, True,
     [(os.path.join("C:\\Users\\me\\AppData\\Roaming", "jupyter-tunnel", "profiles.ini"), False)]),
])
def test_profile_paths(environ, windows, paths, monkeypatch):
    monkeypatch.setattr(jn, "SITE_PROFILES", "/site")
    assert jn.profile_paths(environ, "/home/me", windows) == paths


def test_no_profile_name_reads_no_file():
    """A command line without a profile is as before: nothing is read (a broken file is no error)."""
    assert jn.expand_profile(["-s", "srv"], jt.build_parser(), [("/proc/self/mem/none", False)]) == \
        (None, ["-s", "srv"], [])


# ----------------------------------------------------------------------------- the errors

def user_file() -> str:
    return f"{os.environ['XDG_CONFIG_HOME']}/jupyter-tunnel/profiles.ini"


@pytest.mark.parametrize("text, message", [
    # what configparser finds, with its line
    ("host = gw\n", "2: a key before the first [NAME] line: 'host = gw'"),
    ("[hpc]\nhost = gw\nsubmit\n", "4: neither a [NAME] line, nor a 'key = value' line, nor a comment: 'submit'"),
    ("[hpc]\nhost: gw\n", "3: neither a [NAME] line, nor a 'key = value' line, nor a comment: 'host: gw'"),
    ("[hpc]\nhost = a\n[hpc]\n", "4: profile [hpc] a second time in the file"),
    ("[hpc]\nhost = a\nqueue = q\nhost = b\n", "5: key 'host' a second time in [hpc]"),
    # what a profile may not be
    ("[DEFAULT]\nqueue = q\n[hpc]\nhost = a\n", "2: [DEFAULT] is no profile (configparser would give its keys to "
                                                "every profile): write the keys in each profile"),
    ("[hpc]\nhost = a\n[-x]\nhost = b\n", "4: [-x]: a profile's name cannot start with '-' (it is given as the "
                                          "first argument, which an option cannot be)"),
    # keys
    ("[hpc]\nhots = gw\n", "3: [hpc] unknown key 'hots' (did you mean 'host'?): the keys are jupyter-tunnel's "
                           "long options without their dashes"),
    ("[hpc]\nfrobnicate = 1\n", "3: [hpc] unknown key 'frobnicate': the keys are jupyter-tunnel's long options "
                                "without their dashes"),
    ("[hpc]\nhelp = yes\n", "3: [hpc] help: --help only prints, it cannot be in a profile"),
    ("[hpc]\nversion = yes\n", "3: [hpc] version: --version only prints, it cannot be in a profile"),
    ("[hpc]\nprofiles = yes\n", "3: [hpc] profiles: --profiles only prints, it cannot be in a profile"),
    # values: the option's own words, on the value's line
    ("[hpc]\nqueue =\n", "3: [hpc] queue: no value"),
    ("[hpc]\nkeepalive = 0\n", "3: [hpc] keepalive: expected a whole number from 1 to 3600, not '0'"),
    ("[hpc]\ntimeout = nan\n", "3: [hpc] timeout: expected seconds, more than 0 and at most 86400, not 'nan'"),
    ("[hpc]\nscheduler = pbs\n", "3: [hpc] scheduler: invalid choice: 'pbs' (choose from 'sge', 'slurm')"),
    ("[hpc]\ntype = hub\n", "3: [hpc] type: invalid choice: 'hub' (choose from 'lab', 'notebook', 'server')"),
    ("[hpc]\nresource =\n  mem=8G\n  -pe 'smp 4\n", "5: [hpc] resource: \"-pe 'smp 4\" does not split like a "
                                                  "shell command: no closing quotation"),
    ("[hpc]\njob = 4711;rm\n", "3: [hpc] job: not a job id (a letter or digit, then letters, digits, . _ -): "
                               "'4711;rm'"),
    ("[hpc]\nssh-option = User=a\x1bb\n", "3: [hpc] ssh-option: control characters (a newline, say) are not "
                                         "allowed: 'User=a\\x1bb'"),
    ("[hpc]\nqueue =\n  short\n  long\n", "5: [hpc] queue: one value, on one line (only a repeatable option "
                                          "takes one value per line)"),
    ("[hpc]\nsubmit = yes\n  no\n", "4: [hpc] submit: one value, on one line (only a repeatable option takes "
                                    "one value per line)"),
    ("[hpc]\nsubmit = maybe\n", "3: [hpc] submit: expected yes or no (true/false, on/off, 1/0), not 'maybe'"),
    ("[hpc]\nverbose = 10\n", "3: [hpc] verbose: expected yes or no (true/false, on/off, 1/0, or a number up "
                              "to 9), not '10'"),
])
def test_every_error_names_the_file_and_line(text, message):
    assert error_of("# profiles\n" + text) == f"{user_file()}:{message}"


def test_an_error_in_another_profile_does_not_stop_this_one():
    assert expand("[hpc]\nhost = gw\n[other]\nhots = x\n") == ["--host=gw"]


def test_a_missing_profile_names_the_files_the_users_first(files):
    site, user = files
    write(user, "[hpc]\nhost = gw\n")
    assert error_of("[hpc]\nhost = gw\n", "hcp") == \
        f"no profile hcp in {user} (jupyter-tunnel --profiles lists them)"
    parser = jt.build_parser()
    with pytest.raises(jn.ProfileError) as caught:
        jn.expand_profile(["hcp"], parser, jn.profile_paths(dict(os.environ), "/nonexistent"))
    assert str(caught.value) == f"no profile hcp in {user}, {site} (jupyter-tunnel --profiles lists them)"


def test_a_file_that_cannot_be_read(files, tmp_path):
    directory = tmp_path / "dir.ini"
    directory.mkdir()
    with pytest.raises(jn.ProfileError, match=rf"^cannot read {directory}: Is a directory: {directory}$"):
        jn.load_profiles([(str(directory), False)])
    binary = tmp_path / "bin.ini"
    binary.write_bytes(b"[hpc]\nhost = gw\npre = caf\xe9\n")
    with pytest.raises(jn.ProfileError, match=rf"^{binary}:3: not UTF-8 text$"):
        jn.load_profiles([(str(binary), False)])


# ------------------------------------------------------------- a site file others may change

def stat_result(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("uid, mode, problem", [
    (0, stat.S_IFREG | 0o644, ""),
    (1000, stat.S_IFREG | 0o600, ""),  # the user's own
    (0, stat.S_IFDIR | 0o755, ""),
    (0, stat.S_IFREG | 0o664, "F is writable by others than its owner (mode 0664)"),
    (0, stat.S_IFREG | 0o646, "F is writable by others than its owner (mode 0646)"),
    (0, stat.S_IFDIR | 0o1777, "F is writable by others than its owner (mode 1777)"),
    (1001, stat.S_IFREG | 0o644, "F is owned by uid 1001, neither root nor you"),
])
def test_unsafe_file_problem(uid, mode, problem):
    assert jn.unsafe_file_problem(stat_result(uid, mode), "F", 1000) == problem


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_site_file_others_may_write_is_skipped_with_a_warning(files, what, capsys):
    site, user = files
    write(site, "[hpc]\nhost = gw\n", 0o664 if what == "file" else 0o644)
    if what == "directory":
        site.parent.chmod(0o777)
    profiles, _ = jn.load_profiles([(str(site), True), (str(user), False)])
    assert profiles == {}
    where = site if what == "file" else site.parent
    mode = "0664" if what == "file" else "0777"
    assert capsys.readouterr().err == \
        f"Warning: {site} is skipped: {where} is writable by others than its owner (mode {mode})\n"
    # not so the user's own: their home is theirs to share
    write(user, "[hpc]\nhost = gw\n", 0o664)
    assert list(jn.load_profiles([(str(user), False)])[0]) == ["hpc"]


def test_a_safe_site_file_is_read(files):
    site, _ = files
    write(site, "[hpc]\nhost = gw\n")
    assert list(jn.load_profiles([(str(site), True)])[0]) == ["hpc"]


# ------------------------------------------------------------------------ the command line

def test_main_shows_a_profiles_command_line_without_running_it(files, capsys):
    write(files[1], HPC)
    assert jt.main(["hpc", "-r", "mem=32G", "--profiles"]) == jt.EXIT_OK
    printed = capsys.readouterr().out
    assert shlex.split(printed) == ["jupyter-tunnel", *expand(HPC), "-r", "mem=32G"]
    assert printed == ("jupyter-tunnel --host=me@gw.uni.edu --host=me@head --submit --queue=short --resource=mem=8G "
                       "--resource=h_rt=4:00:00 '--pre=module load anaconda' --conda-env=lab -r mem=32G\n")
    assert jt.main(["hpc", "--prof"]) == jt.EXIT_OK  # as argparse takes an abbreviation
    assert capsys.readouterr().out == printed.replace(" -r mem=32G", "")


def test_main_lists_the_profiles(files, capsys):
    site, user = files
    write(site, "[hpc]\nhost = gw head\nqueue = short\n[lab]\nhost = lab.uni.edu\n")
    write(user, "[hpc]\nqueue = long\n[broken]\nhots = x\n")
    assert jt.main(["--profiles"]) == jt.EXIT_USAGE  # a broken profile: said, the others listed
    out, err = capsys.readouterr()
    assert out == (f"hpc  ({site}:1, {user}:1)\n  jupyter-tunnel --host=gw --host=head --queue=long\n"
                   f"lab  ({site}:4)\n  jupyter-tunnel --host=lab.uni.edu\n")
    assert err == (f"Error: {user}:4: [broken] unknown key 'hots' (did you mean 'host'?): the keys are "
                   "jupyter-tunnel's long options without their dashes\n")


def test_main_with_no_profiles_says_so(files, capsys):
    site, user = files
    assert jt.main(["--profiles"]) == jt.EXIT_OK
    assert capsys.readouterr() == ("", f"Info: No profiles in {user}, {site}.\n")


@pytest.mark.parametrize("argv, message", [
    (["nope"], "Error: no profile nope in {user}, {site} (jupyter-tunnel --profiles lists them)\n"),
    (["bad"], "Error: {user}:2: [bad] keepalive: expected a whole number from 1 to 3600, not 'x'\n"),
    (["bad", "--profiles"], "Error: {user}:2: [bad] keepalive: expected a whole number from 1 to 3600, not 'x'\n"),
])
def test_main_profile_errors_are_one_line_and_exit_2(files, argv, message, capsys):
    site, user = files
    write(user, "[bad]\nkeepalive = x\n")
    assert jt.main(argv) == jt.EXIT_USAGE
    assert capsys.readouterr() == ("", message.format(user=user, site=site))


def test_verbose_shows_the_files_the_profile_and_the_command_line(files, capsys):
    site, user = files
    write(user, "# mine\n[srv]\nhost = srv\npre = module load x\n")
    # the command line is refused after the profile is expanded: --pre without --start
    with pytest.raises(SystemExit) as caught:
        jt.main(["srv", "-v"])
    assert caught.value.code == jt.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.splitlines()[:4] == [
        f"Debug: Profiles: {site}: not read (none)",
        f"Debug: Profiles: {user}: read",
        f"Debug: Profile srv: {user}:2",
        "Debug: Command line: jupyter-tunnel --host=srv '--pre=module load x' -v",
    ]
    assert "--pre goes with --start or --submit" in err
    with pytest.raises(SystemExit):
        jt.main(["srv"])
    assert "Debug:" not in capsys.readouterr().err


def test_a_profile_can_set_verbose_itself(files, capsys):
    write(files[1], "[srv]\nhost = srv\npre = x\nverbose = yes\n")
    with pytest.raises(SystemExit):
        jt.main(["srv"])
    assert "Debug: Command line: jupyter-tunnel --host=srv --pre=x --verbose" in capsys.readouterr().err


def test_one_profile_serves_both_tools_each_leaving_out_the_others_keys(files, capsys):
    tunnel_argv = expand(HPC)
    assert expand(HPC + "wait = 2m\n", tool=jn, left_out=None) == \
        ["--queue=short", "--resource=mem=8G", "--resource=h_rt=4:00:00", "--pre=module load anaconda",
         "--conda-env=lab", "--wait=2m"]
    assert expand(HPC + "wait = 2m\n") == tunnel_argv  # (the file the tools read below)
    assert jn.main(["--profiles"]) == jn.EXIT_OK
    assert capsys.readouterr().out == (
        f"hpc  ({files[1]}:2)\n  jupyter-node --queue=short --resource=mem=8G --resource=h_rt=4:00:00 "
        "'--pre=module load anaconda' --conda-env=lab --wait=2m\n  (not jupyter-node's, left out: host, submit)\n")
    # the tunnel has no --wait: jupyter-node's key is left out there too (a typo is not)
    assert jt.main(["hpc", "--profiles"]) == jt.EXIT_OK
    assert capsys.readouterr().out == f"jupyter-tunnel {shlex.join(tunnel_argv)}\n"
    assert jt.main(["--profiles"]) == jt.EXIT_OK
    assert capsys.readouterr().out.endswith("\n  (not jupyter-tunnel's, left out: wait)\n")
    assert "unknown key 'wiat'" in error_of(HPC + "wiat = 2m\n")
    # jupyter-node cannot know the tunnel's keys: it leaves out every key that is none of its own
    assert expand("[hpc]\nwiat = 2m\nqueue = q\n", tool=jn, left_out=None) == ["--queue=q"]


def test_the_expansion_is_parsed_by_the_same_parser_as_the_users_options():
    """No option of the profile's is taken apart from the parser: what it refuses, it refuses in both."""
    parser = jt.build_parser()
    argv = expand("[hpc]\nhost = srv\nsubmit = yes\nstart = yes\n", "hpc")
    assert isinstance(parser.parse_args(argv), argparse.Namespace)  # parses; main() then refuses the pair
    assert jt.cluster_option_problem(parser.parse_args(argv)).startswith("--submit cannot go with --start")
