"""README.md and docs/ against the code: every option, its default and every exit code of the three tools.

The options and defaults are taken from the parsers themselves (``build_parser()``), the exit
codes from the modules' ``EXIT_*`` constants, so a new option, a changed default or a new
exit code fails here until the documentation's tables say the same.  Each tool's tables are
found in its document under its section headings (``TOOLS``); an options table is one whose
header starts with ``option``, an exit-code table one whose header starts with ``code``.
jupyter-tunnel's options tables follow its ``--help`` groups, one table each.  The README stays
a short door (``README_MAX_LINES``), and every relative link in it and in docs/ leads somewhere.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import jupyter_node as jn
import jupyter_tunnel as jt
import jupyter_tunnel_shutdown as sd

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# a newcomer reads the README's first screens; the rest of the manual lives in docs/
README_MAX_LINES = 400

# tool -> (its module, the document and its headings whose sections, subsections included, hold
# its usage block, its options table(s) and its exit-code table; sections that do not nest)
TOOLS = {
    "jupyter-tunnel": (jt, README, ("Usage",)),
    "jupyter-tunnel-shutdown": (sd, DOCS / "shutdown.md", ("jupyter-tunnel-shutdown",)),
    "jupyter-node": (jn, DOCS / "jupyter-node.md", ("jupyter-node",)),
}
FLAG_RE = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
HEADING_RE = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target): the target has no spaces; code spans are taken out first
LINK_RE = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")
CODE_SPAN_RE = re.compile(r"`[^`]*`")
FENCE_RE = re.compile(r"\s*(```|~~~)")
# argparse's own actions, which the options tables leave to the synopsis
BUILTIN_ACTIONS = (argparse._HelpAction, argparse._VersionAction)


def prose_lines(text: str) -> list[tuple[str, bool]]:
    """Each line of markdown ``text`` with whether it is outside a fenced code block."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE_RE.match(line):
            fenced = not fenced
            lines.append((line, False))
        else:
            lines.append((line, not fenced))
    return lines


def markdown_sections(text: str) -> dict[str, list[str]]:
    """Heading title -> the section's lines, its subsections included (code blocks never split it)."""
    lines = prose_lines(text)
    headings = [(i, len(m.group(1)), m.group(2)) for i, (line, prose) in enumerate(lines)
                if prose and (m := HEADING_RE.fullmatch(line))]
    sections: dict[str, list[str]] = {}
    for n, (start, level, title) in enumerate(headings):
        end = next((i for i, lvl, _ in headings[n + 1:] if lvl <= level), len(lines))
        sections.setdefault(title, []).extend(line for line, _ in lines[start + 1:end])
    return sections


def split_row(line: str) -> list[str]:
    """The cells of a markdown table row; ``\\|`` is a pipe inside a cell."""
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def markdown_tables(lines: list[str]) -> list[list[list[str]]]:
    """The tables in ``lines`` (outside code blocks): rows of cells, header first, no separator."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line, prose in prose_lines("\n".join(lines)) + [("", True)]:
        if prose and line.lstrip().startswith("|"):
            cells = split_row(line)
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def code_blocks(lines: list[str]) -> list[str]:
    """The fenced code blocks in ``lines``, each as one text."""
    blocks, current, fenced = [], [], False
    for line in lines:
        if FENCE_RE.match(line):
            if fenced:
                blocks.append("\n".join(current))
            fenced, current = not fenced, []
        elif fenced:
            current.append(line)
    return blocks


def default_text(action: argparse.Action) -> str | None:
    """The default as the README must say it, or None when there is nothing to say."""
    default = action.default
    if default in (None, argparse.SUPPRESS) or isinstance(default, (bool, list)) \
            or isinstance(action, argparse._CountAction):
        return None
    return f"{default:g}" if isinstance(default, float) else str(default)


def says_default(text: str, value: str) -> bool:
    """Whether a README cell says ``value`` is the default: "default 60", "default: `jupyter`",
    "`lab` (default)", "`15s`, the default"."""
    v = re.escape(value)
    end = r"(?![\w.])"
    return bool(re.search(rf"\bdefault:?\s+`?{v}`?{end}", text, re.I)
                or re.search(rf"(?<![\w.])`?{v}`?\s*(?:\(default\)|,\s*the default\b)", text, re.I))


def section_lines(text: str, headings: tuple[str, ...], document: str = "README.md") -> tuple[list[str], str]:
    """The lines of the sections under ``headings``, and the problem ("" when there is none)."""
    sections = markdown_sections(text)
    missing = [heading for heading in headings if heading not in sections]
    if missing:
        return [], f"{document} has no heading {missing[0]!r}"
    return [line for heading in headings for line in sections[heading]], ""


def tables_with(header: str, lines: list[str]) -> list[list[list[str]]]:
    """The tables whose first header cell is ``header``."""
    return [t for t in markdown_tables(lines) if t[0][0].lower() == header]


def option_problems(tool: str, headings: tuple[str, ...], parser: argparse.ArgumentParser,
                    text: str, document: str = "README.md") -> list[str]:
    """What the usage block and options table(s) under ``headings`` say wrong about ``tool``'s ``parser``."""
    where = f"{document}, {tool}'s section {' + '.join(map(repr, headings))}"
    lines, missing = section_lines(text, headings, document)
    if missing:
        return [f"{missing} (where {tool}'s options are looked for)"]
    rows = [row for table in tables_with("option", lines) for row in table[1:]]
    if not rows:
        return [f"{where}: no options table (a table whose header starts with 'option')"]
    problems = []
    actions = [a for a in parser._actions if a.option_strings]
    known = {flag for a in actions for flag in a.option_strings}
    by_flags: dict[frozenset, list[list[str]]] = {}
    for row in rows:
        flags = frozenset(FLAG_RE.findall(row[0]))
        by_flags.setdefault(flags, []).append(row)
        if not flags & known:
            problems.append(f"{where}: row {row[0]!r} names no option of {tool} (stale row?)")
    for action in actions:
        if isinstance(action, BUILTIN_ACTIONS):
            continue
        flags = ", ".join(action.option_strings)
        matching = by_flags.get(frozenset(action.option_strings), [])
        if len(matching) != 1:
            near = [row[0] for row in rows if set(FLAG_RE.findall(row[0])) & set(action.option_strings)]
            problems.append(f"{where}: {len(matching)} rows whose first cell names exactly {flags} "
                            f"(rows naming some of them: {near}); want one")
            continue
        row = matching[0]
        meaning = " | ".join(row[1:])
        value = default_text(action)
        if value is not None and not says_default(meaning, value):
            problems.append(f"{where}: row {row[0]!r} does not say its default is {value!r} "
                            f"(as 'default {value}'), which {tool}'s parser has")
        for choice in action.choices or ():
            if not re.search(rf"(?<![\w-]){re.escape(str(choice))}(?![\w-])", " ".join(row)):
                problems.append(f"{where}: row {row[0]!r} does not name the choice {choice!r}")
    synopses = [b for b in code_blocks(lines) if re.match(rf"{re.escape(tool)}\s+[\[-]", b)]
    if len(synopses) != 1:
        return problems + [f"{where}: {len(synopses)} usage blocks starting with '{tool} [' or '{tool} -'; want one"]
    named = set(FLAG_RE.findall(synopses[0]))
    for flag in sorted(named - known):
        problems.append(f"{where}: the usage block names {flag}, which {tool} does not have")
    for action in actions:
        if not named & set(action.option_strings):
            problems.append(f"{where}: the usage block names none of {', '.join(action.option_strings)}")
    return problems


def exit_codes(module) -> dict[int, list[str]]:
    """A module's exit codes: number -> the EXIT_* names that have it."""
    codes: dict[int, list[str]] = {}
    for name, value in vars(module).items():
        if name.startswith("EXIT_") and isinstance(value, int):
            codes.setdefault(value, []).append(name)
    return codes


def exit_code_problems(tool: str, headings: tuple[str, ...], codes: dict[int, list[str]],
                       text: str, document: str = "README.md") -> list[str]:
    """What the exit-code table under ``headings`` says wrong about ``tool``'s ``codes`` (``exit_codes``)."""
    where = f"{document}, {tool}'s section {' + '.join(map(repr, headings))}"
    lines, missing = section_lines(text, headings, document)
    if missing:
        return [f"{missing} (where {tool}'s exit codes are looked for)"]
    tables = tables_with("code", lines)
    if len(tables) != 1:
        return [f"{where}: {len(tables)} exit-code tables (header starting with 'code'); want one"]
    listed: dict[int, str] = {}
    problems = []
    for row in tables[0][1:]:
        if not re.fullmatch(r"\d+", row[0]):
            problems.append(f"{where}: exit-code row {row[0]!r} is not a number")
        elif int(row[0]) in listed:
            problems.append(f"{where}: exit code {row[0]} is listed twice")
        else:
            listed[int(row[0])] = row[1] if len(row) > 1 else ""
    for code in sorted(set(codes) - set(listed)):
        problems.append(f"{where}: the exit-code table lacks {code} ({', '.join(codes[code])} in {tool})")
    for code in sorted(set(listed) - set(codes)):
        problems.append(f"{where}: the exit-code table lists {code} ({listed[code]!r}), "
                        f"which {tool} has no EXIT_* constant for")
    return problems


def help_exit_codes(parser: argparse.ArgumentParser) -> set[int]:
    """The exit codes that ``--help``'s epilog lists ("exit codes: 0 ..., 2 ..., 130 ...")."""
    tail = (parser.epilog or "").partition("exit codes:")[2]
    return {int(code) for code in re.findall(r"(?:^|[,:])\s+(\d+)\s", tail)}


def titled_tables(lines: list[str], header: str) -> list[tuple[str, list[list[str]]]]:
    """The tables whose first header cell is ``header``, each with the title of the heading right above it."""
    titled, title, chunk = [], "", []
    for line, prose in prose_lines("\n".join(lines)) + [("# end", True)]:
        match = HEADING_RE.fullmatch(line) if prose else None
        if match:
            titled += [(title, table) for table in tables_with(header, chunk)]
            title, chunk = match.group(2), []
        else:
            chunk.append(line)
    return titled


def group_problems(tool: str, headings: tuple[str, ...], parser: argparse.ArgumentParser,
                   text: str, document: str = "README.md") -> list[str]:
    """Where the options tables under ``headings`` do not follow ``parser``'s ``--help`` groups.

    One table per group, under a heading that starts with the group's title (up to a ``:`` or
    ``(``), in the groups' order.  The untitled default group (``-v``; "options" or, before
    Python 3.10, "optional arguments") has a table of its own under any heading.
    """
    where = f"{document}, {tool}'s section {' + '.join(map(repr, headings))}"
    lines, missing = section_lines(text, headings, document)
    if missing:
        return [f"{missing} (where {tool}'s options are looked for)"]
    groups = [g for g in parser._action_groups
              if any(a.option_strings and not isinstance(a, BUILTIN_ACTIONS) for a in g._group_actions)]
    group_of = {frozenset(a.option_strings): g for g in groups for a in g._group_actions}
    tables = titled_tables(lines, "option")
    # the groups each table holds, in the order of its rows
    held = [[group_of[flags] for row in table[1:]
             if (flags := frozenset(FLAG_RE.findall(row[0]))) in group_of] for _, table in tables]
    problems, order = [], []
    for (title, _), table_groups in zip(tables, held):
        named = list(dict.fromkeys(g.title for g in table_groups))
        if len(named) > 1:
            problems.append(f"{where}: the options table under {title!r} mixes the --help groups {named}")
    for group in groups:
        at = [n for n, table_groups in enumerate(held) if group in table_groups]
        if len(at) != 1:
            problems.append(f"{where}: the options of the --help group {group.title!r} are in "
                            f"{len(at)} tables ({[tables[n][0] for n in at]}); want one")
            continue
        if group is parser._optionals:
            continue
        order.append(at[0])
        title = tables[at[0]][0]
        wanted = re.split(r"[:(]", group.title)[0].strip().lower()
        if not title.replace("`", "").lower().startswith(wanted):
            problems.append(f"{where}: the --help group {group.title!r} has its table under the heading "
                            f"{title!r}, which does not start with {wanted!r}")
    if order != sorted(order):
        problems.append(f"{where}: the options tables are not in the order of the --help groups")
    return problems


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces made hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def heading_anchors(text: str) -> set[str]:
    """Every heading's anchor in markdown ``text``; a repeated one gets ``-1``, ``-2`` as on GitHub."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line, prose in prose_lines(text):
        if prose and (match := HEADING_RE.fullmatch(line)):
            anchor = github_anchor(match.group(2))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.add(f"{anchor}-{count}" if count else anchor)
    return anchors


def relative_links(text: str) -> list[str]:
    """The targets of the links in markdown ``text`` that stay in the repository (no ``scheme:``).

    Paragraph by paragraph, so that a link whose text wraps onto the next line is seen too.
    """
    prose = "\n".join(line if is_prose else "" for line, is_prose in prose_lines(text))
    return [target for paragraph in re.split(r"\n\s*\n", prose)
            for target in LINK_RE.findall(CODE_SPAN_RE.sub("", paragraph))
            if not re.match(r"[A-Za-z][\w+.-]*:", target)]


def link_problems(path: Path) -> list[str]:
    """The relative links in the markdown file ``path`` whose file, or heading, does not exist."""
    problems = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        name, _, anchor = target.partition("#")
        dest = (path.parent / name) if name else path
        if not dest.exists():
            problems.append(f"{path.name}: link {target!r}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{path.name}: link {target!r}: {dest.name} has no heading with that anchor")
    return problems


def document_name(path: Path) -> str:
    """``path`` as the problems name it: relative to the repository."""
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("tool", TOOLS)
def test_every_option_has_its_readme_row_and_default(tool):
    module, document, headings = TOOLS[tool]
    problems = option_problems(tool, headings, module.build_parser(), document.read_text(encoding="utf-8"),
                               document_name(document))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("tool", TOOLS)
def test_every_exit_code_is_in_the_readme_table(tool):
    module, document, headings = TOOLS[tool]
    problems = exit_code_problems(tool, headings, exit_codes(module), document.read_text(encoding="utf-8"),
                                  document_name(document))
    assert not problems, "\n".join(problems)


def test_readme_options_tables_follow_the_help_groups():
    module, document, headings = TOOLS["jupyter-tunnel"]
    problems = group_problems("jupyter-tunnel", headings, module.build_parser(), document.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}: move the rest to docs/"


def test_readme_names_the_test_commands():
    # .ci/run runs "exactly the README's test command"; the no-root line is for contributors
    lines = {line.strip() for block in code_blocks(README.read_text(encoding="utf-8").splitlines())
             for line in block.splitlines()}
    assert "./tests/run.sh" in lines
    assert any(line.endswith('-m pytest -m "not integration" tests/') for line in lines), sorted(lines)


def documents() -> list[Path]:
    """README.md and every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", documents(), ids=document_name)
def test_every_relative_link_leads_somewhere(path):
    problems = link_problems(path)
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README.read_text(encoding="utf-8"))}
    pages = documents()[1:]
    assert pages, "docs/ holds no page"
    assert [document_name(p) for p in pages if p.resolve() not in linked] == []


@pytest.mark.parametrize("tool", TOOLS)
def test_help_lists_every_exit_code(tool):
    module = TOOLS[tool][0]
    assert help_exit_codes(module.build_parser()) == set(exit_codes(module)), \
        f"{tool} --help's 'exit codes:' lists {sorted(help_exit_codes(module.build_parser()))}"


# The checker itself: it must see what it is there for.

SAMPLE = """\
# tool

## Usage

```
tool [-x|--ex N] [--mode a|b] [-h]
# not a heading: a comment in a code block
```

| option | meaning |
|---|---|
| `-x, --ex N` | a number (default 60; at most 9) |
| `--mode a\\|b` | `a` (default) or `b` |

### Exit codes

| code | meaning |
|---|---|
| 0 | fine |
| 2 | bad option |

## Other
| option | meaning |
|---|---|
| `--elsewhere` | not ours |
"""


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("-x", "--ex", type=float, default=60.0)
    parser.add_argument("--mode", choices=("a", "b"), default="a")
    return parser


@pytest.mark.parametrize("text, value, says", [
    ("a number (default 60; at most 9)", "60", True),
    ("a number (default 600)", "60", False),
    ("a number (default 60.5)", "60", False),
    ("Default: `jupyter`.", "jupyter", True),
    ("`lab` (default), `notebook`", "lab", True),
    ("(`15s`, the default; `2m`)", "15s", True),
    ("`notebook` (job name `notebook`, the default)", "notebook", True),
    ("ends after 60 s", "60", False),
])
def test_says_default(text, value, says):
    assert says_default(text, value) is says


def test_split_row_keeps_escaped_pipes():
    assert split_row("| `-t, --type notebook\\|lab` | x |") == ["`-t, --type notebook|lab`", "x"]


def test_sections_and_tables_ignore_code_blocks():
    sections = markdown_sections(SAMPLE)
    assert "not a heading: a comment in a code block" not in sections
    assert [t[0] for t in markdown_tables(sections["Usage"])] == [["option", "meaning"], ["code", "meaning"]]
    assert len(markdown_tables(sections["Exit codes"])) == 1


SAMPLE_CODES = {0: ["EXIT_OK"], 2: ["EXIT_USAGE"]}


def sample_problems(text: str) -> list[str]:
    """What the checker finds wrong in a variant of SAMPLE."""
    return (option_problems("tool", ("Usage",), sample_parser(), text)
            + exit_code_problems("tool", ("Usage",), SAMPLE_CODES, text))


def test_checker_passes_a_true_readme():
    assert sample_problems(SAMPLE) == []


@pytest.mark.parametrize("change, problem", [
    (("default 60;", "default 61;"), "row '`-x, --ex N`' does not say its default is '60'"),
    (("| `--mode a\\|b` | `a` (default) or `b` |\n", ""), "0 rows whose first cell names exactly --mode"),
    (("`--mode a\\|b` | `a` (default) or `b`", "`--mode a` | `a` (default)"), "does not name the choice 'b'"),
    (("[-x|--ex N] ", ""), "the usage block names none of -x, --ex"),
    (("[-h]", "[-h] [--gone]"), "the usage block names --gone, which tool does not have"),
    (("| `--mode", "| `--stale` | old |\n| `--mode"), "row '`--stale`' names no option of tool"),
    (("| 2 | bad option |", "| 2 | bad option |\n| 3 | missing |"), "lists 3 ('missing'), which tool has no"),
    (("| 2 | bad option |", ""), "the exit-code table lacks 2 (EXIT_USAGE in tool)"),
    (("| 0 | fine |", "| 0 | fine |\n| 0 | again |"), "exit code 0 is listed twice"),
    (("## Usage", "## Use"), "README.md has no heading 'Usage'"),
])
def test_checker_names_the_wrong_row(change, problem):
    text = SAMPLE.replace(*change)
    assert text != SAMPLE
    problems = sample_problems(text)
    assert any(problem in p for p in problems), problems


def test_checker_sees_a_changed_default_in_the_code():
    parser = jt.build_parser()
    next(a for a in parser._actions if "--keepalive" in a.option_strings).default = 11
    problems = option_problems("jupyter-tunnel", ("Usage",), parser, README.read_text(encoding="utf-8"))
    assert any("--keepalive" in p and "'11'" in p for p in problems), problems


@pytest.mark.parametrize("epilog, codes", [
    ("examples: x\n\nexit codes: 0 ok, 2 bad option, 3 x\n  missing, 130 interrupted,\n  1 other", {0, 1, 2, 3, 130}),
    ("no codes here", set()),
])
def test_help_exit_codes(epilog, codes):
    assert help_exit_codes(argparse.ArgumentParser(epilog=epilog)) == codes


def test_options_may_be_spread_over_several_sections():
    parser = sample_parser()
    parser.add_argument("--elsewhere", action="store_true")
    text = SAMPLE.replace("[-h]", "[-h] [--elsewhere]")
    assert any("0 rows whose first cell names exactly --elsewhere" in p
               for p in option_problems("tool", ("Usage",), parser, text))
    assert option_problems("tool", ("Usage", "Other"), parser, text) == []


# The group checker: jupyter-tunnel's tables must follow --help's groups.

GROUPED = """\
## Usage

```
tool [-x|--ex N] [--mode a|b] [-v] [-h]
```

#### Numbers (what counts)

| option | meaning |
|---|---|
| `-x, --ex N` | a number (default 60) |

#### Modes: a or b

| option | meaning |
|---|---|
| `--mode a\\|b` | `a` (default) or `b` |

#### Output

| option | meaning |
|---|---|
| `-v` | more |
"""


def grouped_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument_group("numbers (what counts)").add_argument("-x", "--ex", type=float, default=60.0)
    parser.add_argument_group("modes: a or b").add_argument("--mode", choices=("a", "b"), default="a")
    parser.add_argument("-v", action="store_true")
    return parser


def test_group_checker_passes_grouped_tables():
    assert group_problems("tool", ("Usage",), grouped_parser(), GROUPED) == []
    assert option_problems("tool", ("Usage",), grouped_parser(), GROUPED) == []


@pytest.mark.parametrize("change, problem", [
    (("| `-x, --ex N` | a number (default 60) |\n", ""),
     "the options of the --help group 'numbers (what counts)' are in 0 tables"),
    (("| `--mode a\\|b` | `a` (default) or `b` |\n", "| `--mode a\\|b` | `a` (default) or `b` |\n| `-x, --ex N` | again |\n"),
     "under 'Modes: a or b' mixes the --help groups ['modes: a or b', 'numbers (what counts)']"),
    (("#### Modes: a or b", "#### Choices"),
     "the --help group 'modes: a or b' has its table under the heading 'Choices', which does not start with 'modes'"),
    (("#### Numbers (what counts)\n\n| option | meaning |\n|---|---|\n| `-x, --ex N` | a number (default 60) |\n\n", ""),
     "are in 0 tables"),
])
def test_group_checker_names_the_wrong_table(change, problem):
    text = GROUPED.replace(*change)
    assert text != GROUPED
    problems = group_problems("tool", ("Usage",), grouped_parser(), text)
    assert any(problem in p for p in problems), problems


def test_group_checker_sees_tables_out_of_order():
    numbers = "#### Numbers (what counts)\n\n| option | meaning |\n|---|---|\n| `-x, --ex N` | a number (default 60) |\n\n"
    text = GROUPED.replace(numbers, "").replace("#### Output", numbers + "#### Output")
    assert text != GROUPED
    assert any("not in the order of the --help groups" in p
               for p in group_problems("tool", ("Usage",), grouped_parser(), text))


# The link checker.

@pytest.mark.parametrize("title, anchor", [
    ("A cluster in one command: `--submit`, `-n auto`", "a-cluster-in-one-command---submit--n-auto"),
    ("The relay: the tool's own local port", "the-relay-the-tools-own-local-port"),
    ("7. Wait", "7-wait"),
    ("Starting a server (`--start`)", "starting-a-server---start"),
    ("jupyter-node", "jupyter-node"),
])
def test_github_anchor(title, anchor):
    assert github_anchor(title) == anchor


def test_heading_anchors_number_repeats_and_skip_code():
    text = "# Usage\n\n## Options\n\n```\n# not a heading\n```\n\n## Options\n"
    assert heading_anchors(text) == {"usage", "options", "options-1"}


def test_relative_links_skip_urls_and_code():
    text = ("See [a](a.md), [b](b.md#x) and [web](https://example.org/c.md).\n"
            "`[not](code.md)` [`--x`](#opt) [wrapped\nlink](w.md)\n```\n[in](block.md)\n```\n")
    assert relative_links(text) == ["a.md", "b.md#x", "#opt", "w.md"]


def test_link_checker_finds_missing_files_and_headings(tmp_path):
    (tmp_path / "b.md").write_text("# B\n\n## Some part\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text("# A\n\n[ok](b.md#some-part) [self](#a) [file](b.md)\n"
                    "[gone](c.md) [no heading](b.md#other) [no self](#nowhere)\n", encoding="utf-8")
    problems = link_problems(page)
    assert len(problems) == 3, problems
    assert "link 'c.md': no file" in problems[0]
    assert "link 'b.md#other': b.md has no heading" in problems[1]
    assert "link '#nowhere': a.md has no heading" in problems[2]
