"""The declared API between the modules (issue 21): the imports go one way only,
jupyter_tunnel -> jupyter_tunnel_shutdown -> jupyter_node; every name jupyter_tunnel.py takes
from jupyter_tunnel_shutdown.py is in that module's ``__all__``, and every name there exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd

REPO = Path(__file__).resolve().parent.parent
TUNNEL, SHUTDOWN, NODE = (REPO / f"{name}.py" for name in ("jupyter_tunnel", "jupyter_tunnel_shutdown", "jupyter_node"))
MODULES = ("jupyter_tunnel", "jupyter_tunnel_shutdown", "jupyter_node")


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def imported_modules(path: Path) -> set[str]:
    """The modules the file at ``path`` imports, anywhere in it (a function's own import too)."""
    found = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def names_taken(path: Path, module: str) -> set[str]:
    """What the file at ``path`` takes from ``module``: ``from module import X`` and
    ``alias.X`` for every name the module is imported as."""
    tree = parse(path)
    aliases, taken = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            taken |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {alias.asname or alias.name for alias in node.names if alias.name == module}
    taken |= {node.attr for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases}
    return taken


def test_the_tunnel_takes_only_the_declared_api_of_the_shutdown_module():
    taken = names_taken(TUNNEL, "jupyter_tunnel_shutdown")
    assert taken, "jupyter_tunnel.py takes nothing from jupyter_tunnel_shutdown.py: the check would prove nothing"
    assert sorted(taken - set(sd.__all__)) == []


def test_every_declared_name_exists():
    assert [name for name in sd.__all__ if not hasattr(sd, name)] == []
    assert [name for name in jt.__all__ if not hasattr(jt, name)] == []


@pytest.mark.parametrize("path, forbidden", [
    (SHUTDOWN, {"jupyter_tunnel"}),
    (NODE, {"jupyter_tunnel", "jupyter_tunnel_shutdown"}),  # it runs alone on a head node
])
def test_the_imports_go_one_way(path, forbidden):
    assert imported_modules(path) & forbidden == set()


def test_the_shutdown_script_loads_without_the_tunnel():
    """Run as the console script runs it: importing it loads jupyter_node, never jupyter_tunnel."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, jupyter_tunnel_shutdown; print(sorted(sys.modules))"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "'jupyter_node'" in loaded and "'jupyter_tunnel'" not in loaded


def test_no_code_outside_a_class_calls_its_private_members():
    """``obj._name(...)`` only as ``self._name``: a class's underscore members are its own."""
    offenders = []
    for path in (TUNNEL, SHUTDOWN, NODE):
        for node in ast.walk(parse(path)):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    # the standard library's: NamedTuple's API, os._exit, and argparse's list of a
                    # parser's actions (it has no public accessor; the profiles' keys come from it)
                    and node.attr not in ("_replace", "_fields", "_asdict", "_exit", "_actions")):
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_the_modules_are_the_installed_ones():
    """pyproject.toml installs the three flat modules that import each other by plain name."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert all(f'"{name}"' in text.split("py-modules")[1].splitlines()[0] for name in MODULES)


# --- the sections of jupyter_tunnel.py (issue 21): in the order the run takes them -------

SECTION_RE = re.compile(r"^# -{5,} (.+)$", re.MULTILINE)
STEP_RE = re.compile(r"^(\d+)\. (\w+)", re.MULTILINE)


def sections(tree: ast.Module, text: str) -> list[tuple[int, str]]:
    """The section headers of ``text``: (line, title)."""
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in SECTION_RE.finditer(text)]


def forward_references(path: Path) -> list[str]:
    """Each use, in a top-level definition, of a top-level name that a later section defines
    (annotations aside: they are strings under ``from __future__ import annotations``)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    starts = [line for line, _ in sections(tree, text)]

    def section_of(line: int) -> int:
        return sum(1 for start in starts if start <= line)

    defined = {}
    for node in tree.body:
        targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        defined.update({name: section_of(node.lineno) for name in targets})
    found = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.If)):
            continue
        used = {name.id for part in ast.walk(node) for name in [part] if isinstance(name, ast.Name)}
        annotations = {name.id for part in ast.walk(node) if isinstance(part, (ast.arg, ast.AnnAssign))
                       for annotation in [getattr(part, "annotation", None)] if annotation is not None
                       for name in ast.walk(annotation) if isinstance(name, ast.Name)}
        returns = {name.id for part in ast.walk(node) if isinstance(part, ast.FunctionDef) and part.returns
                   for name in ast.walk(part.returns) if isinstance(name, ast.Name)}
        for name in sorted(used - annotations - returns):
            if defined.get(name, 0) > section_of(node.lineno):
                found.append(f"{getattr(node, 'name', '?')} -> {name}")
    return found


def test_no_section_uses_a_later_one():
    assert forward_references(TUNNEL) == []


def test_the_checker_finds_a_forward_reference(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("# ----- one\n\ndef a():\n    return b()\n\n# ----- two\n\ndef b():\n    return 1\n")
    assert forward_references(sample) == ["a -> b"]


def test_the_steps_are_numbered_alike_in_the_docstring_the_sections_and_the_docs():
    """The module docstring's steps, the numbered section headers and docs/how-it-works.md's
    headings: the same numbers and first words, in the same order."""
    text = TUNNEL.read_text(encoding="utf-8")
    docstring = STEP_RE.findall(ast.get_docstring(ast.parse(text)) or "")
    headers = [STEP_RE.match(title).groups() for _, title in sections(ast.parse(text), text)
               if STEP_RE.match(title)]
    docs = re.findall(r"^## (\d+)\. (\w+)", (REPO / "docs" / "how-it-works.md").read_text(encoding="utf-8"),
                      re.MULTILINE)
    lower = [(number, word.lower()) for number, word in docstring]
    assert len(lower) == 10 and [int(number) for number, _ in lower] == list(range(1, 11))
    assert [(n, w.lower()) for n, w in headers] == lower
    assert [(n, w.lower()) for n, w in docs] == lower
