"""The README's examples, run, so that it cannot drift from the code (as doctest does for docstrings).

Every ```sh block of README.md runs in bash, in the order of the README, one shell session per
`## ` section (so `ID=$(...)` carries from one block to the next), against a fresh
`headwater serve`: a free port, and a fresh data dir that is `./headwater-data` of the shell's
working directory, as after `make run`. `.venv` there is this interpreter's environment.

Substitutions, in commands and in results: `8000` is the section's server port (the shell also
has HEADWATER_PORT set to it), `9000` a free port for a receiver, and the line `KEY=hw_live_...`
sets the server's bootstrap admin key (every section's shell starts with KEY set to it anyway).

Results: the `# ` comment lines directly below a command (no blank line between) are what the
lines since the previous result print (stdout and stderr). Lines that print and show no result
fail the test, like doctest. A result is compared
- as JSON, when it is one or more JSON values: structurally (key order and spacing aside), where
  a string with `...` in it matches any string with the text around the `...` (`"evt_..."`), the
  string `"..."` alone matches any value, a bare `...` in an object stands for any further keys
  and a bare `...` in an array for any run of further items;
- as text otherwise, line by line, `...` matching any text within a line.

Markers, HTML comments a reader of the rendered README does not see:
- `<!-- not run: why -->` as the last line before a block: the block is not run (the test
  checks that every other sh block ran);
- `<!-- server: NAME=value ... -->` in a section: its server runs with these variables (the
  section's text says so too, for a reader);
- a ```python block whose first line is `# <name>.py` is written to that file in the working
  directory, for the section's shell to run; every other python block needs `not run`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, ServerProcess, free_port

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: .+ -->$")
SERVER = re.compile(r"^<!-- server: (.+) -->$")
PYTHON_FILE = re.compile(r"^# ([\w-]+\.py)\b")
EXAMPLES = ("sh", "python")
MORE = "\0..."  # what a bare `...` becomes while a result is read as JSON


@dataclass
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    text: str
    run: bool


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    server_env: dict[str, str] = field(default_factory=dict)


def sections(readme: str, others: list[str] | None = None) -> list[Section]:
    """The sections with sh or python blocks; the languages of other blocks go to `others`."""
    others = [] if others is None else others
    found = [Section("(top)")]
    lines = readme.splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            found.append(Section(line[3:].strip()))
        elif server := SERVER.match(line):
            found[-1].server_env.update(dict(item.split("=", 1) for item in shlex.split(server.group(1))))
        elif fence := FENCE.match(line):
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if fence.group(1) in EXAMPLES:
                text = "\n".join(body) + "\n"
                found[-1].blocks.append(Block(fence.group(1), start + 1, text, not NOT_RUN.match(previous)))
            else:
                others.append(fence.group(1))
        if line.strip():
            previous = line.strip()
        i += 1
    return [s for s in found if s.blocks]


@dataclass
class Step:
    """Lines to run, then the result they must print ("" for nothing)."""

    code: str
    expected: str
    line: int


def steps(block: Block) -> list[Step]:
    """The block cut after each result: the lines to run and what they must print."""
    found: list[Step] = []
    code: list[str] = []
    result: list[str] = []
    after_command = False
    for number, line in enumerate(block.text.splitlines(), start=block.line + 1):
        comment = line.lstrip().startswith("#")
        if comment and (after_command or result):
            result.append(line.lstrip()[2:] if line.lstrip().startswith("# ") else line.lstrip()[1:])
            continue
        if result:
            found.append(Step("\n".join(code), "\n".join(result), number))
            code, result = [], []
        code.append(line)
        after_command = bool(line.strip()) and not comment
    if code or result:
        found.append(Step("\n".join(code), "\n".join(result), block.line + 1 + len(block.text.splitlines())))
    return found


# Comparison


def _bare_ellipses(text: str) -> str:
    """The result as JSON text: a bare `...` becomes a marker key (objects) or item (arrays)."""
    out: list[str] = []
    stack: list[str] = []
    i, in_string = 0, False
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("...", i):
            out.append(json.dumps(MORE) + (": null" if stack and stack[-1] == "{" else ""))
            i += 2
        else:
            if c in "{[":
                stack.append(c)
            elif c in "}]" and stack:
                stack.pop()
            out.append(c)
        i += 1
    return "".join(out)


def json_values(text: str) -> list[Any] | None:
    """The JSON values `text` consists of, or None if it is not only JSON."""
    decoder = json.JSONDecoder()
    values, i = [], 0
    text = text.strip()
    try:
        while i < len(text):
            value, i = decoder.raw_decode(text, i)
            values.append(value)
            while i < len(text) and text[i].isspace():
                i += 1
    except json.JSONDecodeError:
        return None
    return values if values else None


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in text.split("...")), re.DOTALL)


def matches(expected: Any, actual: Any) -> bool:
    if expected == "...":
        return True
    if isinstance(expected, str) and "..." in expected:
        return isinstance(actual, str) and _pattern(expected).fullmatch(actual) is not None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        keys = set(expected) - {MORE}
        if keys - set(actual) or (MORE not in expected and set(actual) - keys):
            return False
        return all(matches(expected[k], actual[k]) for k in keys)
    if isinstance(expected, list):
        return isinstance(actual, list) and _items_match(expected, actual)
    # JSON types: true is not 1.
    return type(expected) is type(actual) and bool(expected == actual)


def _items_match(expected: list[Any], actual: list[Any]) -> bool:
    if not expected:
        return not actual
    if expected[0] == MORE:
        return any(_items_match(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and matches(expected[0], actual[0]) and _items_match(expected[1:], actual[1:])


def same_output(expected: str, actual: str) -> bool:
    wanted = json_values(_bare_ellipses(expected)) if expected.strip() else None
    if wanted is not None:
        got = json_values(actual)
        return got is not None and _items_match(wanted, got)
    want_lines, got_lines = expected.strip().splitlines(), actual.strip().splitlines()
    return len(want_lines) == len(got_lines) and all(
        _pattern(w.strip()).fullmatch(g.strip()) is not None for w, g in zip(want_lines, got_lines, strict=True)
    )


# Running


def bootstrap_key(server: ServerProcess) -> str:
    assert server.proc is not None and server.proc.stdout is not None
    for _ in range(10):
        line = server.proc.stdout.readline().decode().strip()
        if line.startswith("hw_live_"):
            return line
    raise AssertionError("the server printed no bootstrap key")


def run_section(section: Section, workdir: Path, server_class: type[ServerProcess]) -> list[tuple[Step, str]]:
    """Each step of the section's runnable blocks, with what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    server = server_class(workdir / "headwater-data")
    # The section's variables only, none of the environment the suite runs in, except more
    # patience for the examples that wait for processing: under the suite's parallel load the
    # server's worker (at nice 10) can take longer than the 10 s a reader's idle machine needs.
    server.env = {**env, "HEADWATER_SYNC_TIMEOUT": "60", **section.server_env}
    receiver_port = str(free_port())
    (workdir / ".venv").symlink_to(sys.prefix)
    ports = {"8000": str(server.port), "9000": receiver_port}

    def substituted(text: str) -> str:
        return re.sub(r"\b(8000|9000)\b", lambda m: ports[m.group(1)], text)

    server.start()
    try:
        key = bootstrap_key(server)
        all_steps: list[Step] = []
        script = ["trap 'kill $(jobs -p) 2>/dev/null' EXIT"]
        for block in section.blocks:
            if not block.run:
                continue
            if block.language == "python":
                name = PYTHON_FILE.match(block.text)
                assert name, f"README.md:{block.line}: a python block to run starts with `# <name>.py`"
                (workdir / name.group(1)).write_text(substituted(block.text))
                continue
            for step in steps(block):
                code = re.sub(r"^KEY=hw_live_\.\.\.", f"KEY={key}", step.code, flags=re.MULTILINE)
                all_steps.append(Step(code, substituted(step.expected), step.line))
                script += [substituted(code), f"printf '\\n@@step {len(all_steps)}@@\\n'"]
        path = f"{workdir / '.venv' / 'bin'}:{env['PATH']}"
        shell_env = {**env, "KEY": key, "HEADWATER_PORT": str(server.port), "PATH": path}
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=workdir,
            env=shell_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=240,
        )
    finally:
        server.stop()
    printed = re.split(r"\n@@step \d+@@\n", done.stdout)
    assert len(printed) == len(all_steps) + 1, done.stdout
    return list(zip(all_steps, printed, strict=False))


README_TEXT = README.read_text()
SECTIONS = [s for s in sections(README_TEXT) if any(b.run for b in s.blocks)]


@pytest.mark.parametrize("section", SECTIONS, ids=[s.title for s in SECTIONS])
def test_the_readme_examples_print_what_it_shows(
    section: Section, tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    mismatches = [
        f"README.md:{step.line}: the lines above it print\n{printed.strip()}\nbut the README shows\n{step.expected}"
        for step, printed in run_section(section, tmp_path, server_factory)
        if not same_output(step.expected, printed)
    ]
    assert not mismatches, "\n\n".join(mismatches)


def test_every_example_block_runs_or_says_why_not() -> None:
    others: list[str] = []
    found = sections(README_TEXT, others)
    # A shell example fenced as anything but sh would escape the test above.
    assert set(others) <= {"", "json", "text"}, others
    blocks = [b for s in found for b in s.blocks]
    for block in blocks:
        if block.language == "python" and block.run:
            assert PYTHON_FILE.match(block.text), f"README.md:{block.line}: name the file (`# <name>.py`) or mark it"
    not_run = [b.line for b in blocks if not b.run]
    ran = [b.line for s in SECTIONS for b in s.blocks if b.run]
    assert sorted(not_run + ran) == [b.line for b in blocks]
    assert len(ran) >= 6, ran


@pytest.mark.parametrize(
    ("expected", "printed", "same"),
    [
        ('{"id":"evt_...","n":1}', '{"n": 1, "id": "evt_01ab"}', True),
        ('{"id":"evt_..."}', '{"id":"key_01ab"}', False),
        ('{"a":"..."}', '{"a":null}', True),
        ('{"a":1,...}', '{"a":1,"b":2}', True),
        ('{"a":1}', '{"a":1,"b":2}', False),
        ('{"a":1,"b":2}', '{"a":1}', False),
        ("[1,...]", "[1,2,3]", True),
        ("[1,...,3]", "[1,2,3]", True),
        ("[...,3]", "[1,2]", False),
        ("[1,2]", "[1,2,3]", False),
        ('{"a":true}', '{"a":1}', False),
        ('{"a":1}\n{"b":2}', '{"a":1}{"b":2}', True),
        ('{"a":1}', "not json", False),
        ("port ... is in use\nexit status 2", "port 1234 is in use\nexit status 2", True),
        ("exit status 2", "exit status 1", False),
        ("", "", True),
        ("", "something", False),
    ],
)
def test_the_placeholder_rule(expected: str, printed: str, same: bool) -> None:
    assert same_output(expected, printed) is same


def test_the_readme_cites_only_files_in_the_repository() -> None:
    prose = re.sub(r"^```.*?^```", "", README_TEXT, flags=re.DOTALL | re.MULTILINE)
    cited = set(re.findall(r"\b[\w./-]+\.md\b", prose))
    cited |= {link for link in re.findall(r"\]\(([^)#][^)]*)\)", prose) if "://" not in link}
    cited |= set(re.findall(r"`((?:headwater|tests|bench)/[^`\s]*)`", prose))
    assert sorted(c for c in cited if not (ROOT / c).exists()) == []


def test_make_run_installs_only_the_package_and_make_test_the_test_extras(tmp_path: Path) -> None:
    """What the not-run first block says; `make -n` prints the commands without running them."""

    def installs(target: str) -> list[str]:
        planned = subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path}"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return [line for line in planned.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]

    assert installs("run") == [f"{tmp_path}/bin/pip install --quiet -e ."]
    assert installs("test") == [f"{tmp_path}/bin/pip install --quiet -e '.[test]'"]
