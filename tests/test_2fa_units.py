"""Unit tables for two-factor logins (issue 20): which prompts -p answers, the generated config's
ConnectTimeout, ssh's reasons and the words of a refused login.  No network, no ssh."""

from __future__ import annotations

import sys

import pytest

import jupyter_tunnel as jt


@pytest.mark.parametrize("first_hop, match", [
    ("gw", "gw"),
    ("alice@gw.example.org:2222", "gw.example.org"),
    ("ssh://alice@srv:22", "srv"),
    ("10.0.0.1", "10.0.0.1"),
    ("g*w", None),  # a pattern would match other hosts too: no timeout rather than a wrong one
    ("", None),
])
def test_connect_timeout_for_the_first_hop_only(first_hop, match):
    body = jt.build_ssh_config(None, [], first_hop=first_hop).splitlines()
    assert not any(line.startswith("ConnectTimeout") for line in body[:body.index("Include ~/.ssh/config")])
    if match is None:
        assert not any("ConnectTimeout" in line or line.startswith("Match") for line in body)
        return
    at = body.index(f"Match originalhost {match}")
    # the user's own ConnectTimeout (their config, included before) wins; "Match all" ends the block
    assert body[at + 1:at + 4] == ["ConnectTimeout 20", "Match all", "Include /etc/ssh/ssh_config"]
