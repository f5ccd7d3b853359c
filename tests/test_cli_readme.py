"""The README's command lines: the set-up commands, the tests' cost and where to run them, and
every ``sk-a2`` example is accepted by the parser (nothing runs)."""

import re
import shlex
from pathlib import Path

import pytest

from sk_a2.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
SETUP = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 '
    'torchvision==0.29.1 && pip install -e ".[offline,plot]" && sk-a2 demo --out demo_out',
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 '
    'torchvision==0.29.1 && pip install -e ".[test]" && python -m pytest -q tests',
)


def text():
    return README.read_text(encoding="utf-8")


def prose():
    """The README outside code blocks, with lines joined."""
    return " ".join(re.sub(r"```.*?```", "", text(), flags=re.S).split())


def test_setup_commands_unchanged():
    lines = text().splitlines()
    for command in SETUP:
        assert command in lines


def test_states_the_tests_cost_and_where_to_run():
    words = prose()
    assert "5 to 8 minutes on 2 CPU cores" in words
    assert "from the repository root" in words
    assert "named `sk_a2`" in words and "shadows the installed package" in words


def command_line_examples():
    section = text().split("## Command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("argv", command_line_examples(), ids=lambda a: " ".join(a[:3]))
def test_command_line_examples_parse(argv):
    assert argv[0] == "sk-a2"
    args = build_parser().parse_args(argv[1:])
    assert args.command == argv[1]


def test_command_line_examples_show_recursive():
    assert any("--recursive" in argv for argv in command_line_examples())
