"""The declared API between the modules: every ``jt.NAME`` that jupyter_tunnel_shutdown.py
uses is in ``jupyter_tunnel.__all__``, and every name there exists (issue 21)."""

from __future__ import annotations

import ast
from pathlib import Path

import jupyter_tunnel as jt

SHUTDOWN = Path(__file__).resolve().parent.parent / "jupyter_tunnel_shutdown.py"


def names_used_of(module_alias: str, path: Path) -> set[str]:
    """The attributes read from ``module_alias`` (``jt.X``) anywhere in the file at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == module_alias}


def test_the_shutdown_script_uses_only_the_declared_api():
    used = names_used_of("jt", SHUTDOWN)
    assert used, "the shutdown script reads nothing of jupyter_tunnel: the check would prove nothing"
    assert sorted(used - set(jt.__all__)) == []


def test_every_declared_name_exists():
    assert [name for name in jt.__all__ if not hasattr(jt, name)] == []


def test_no_code_outside_a_class_calls_its_private_members():
    """``obj._name(...)`` only as ``self._name``: a class's underscore members are its own."""
    offenders = []
    for path in (SHUTDOWN, Path(jt.__file__)):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and node.attr not in ("_replace", "_fields", "_asdict", "_exit")):
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert offenders == []
