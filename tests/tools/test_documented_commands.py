"""Every command the README, the docs/ pages and the scripts' docstrings (= their ``--help``) show is accepted as written: its
script's ``parse_args`` takes it, and its config overrides name keys of its config.

Commands are found generically (``python <script> ...`` lines in the code blocks and inline code of README.md and docs/*.md, and in the
module docstring of every script), so a new tool or example is checked without touching this file.
"""
import ast
import functools
import glob
import os
import re
import shlex
import sys

import pytest

from tools_test_utils import REPO_ROOT, load_script

SCRIPT_GLOBS = ("train_net.py", "tools/*.py", "demo/*.py")
_COMMAND = re.compile(
    r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*"  # environment assignments
    r"(?:\S*/)?python3?\s+"  # python, .venv/bin/python
    r"(?P<script>train_net\.py|tools/\w+\.py|demo/\w+\.py)(?P<rest>(?:\s.*)?)$"
)
_FENCE = re.compile(r"^```.*?$(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def _joined_lines(text):
    """Lines of ``text`` with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def commands_in(text, where):
    """(where, script, argv) for each command line in ``text``; ``[optional]`` groups give two variants."""
    found = []
    for line in _joined_lines(text):
        match = _COMMAND.match(line.strip())
        if not match:
            continue
        rest = match.group("rest")
        variants = {re.sub(r"\[[^\]]*\]", " ", rest), rest.replace("[", " ").replace("]", " ")}
        for variant in sorted(variants):
            found.append((where, match.group("script"), shlex.split(variant, comments=True)))
    return found


def doc_paths():
    """README.md and the pages of docs/, relative to the repository."""
    pages = sorted(os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))
    return ["README.md"] + pages


def readme_commands():
    commands = []
    for page in doc_paths():
        with open(os.path.join(REPO_ROOT, page)) as f:
            text = f.read()
        blocks = [m.group(1) for m in _FENCE.finditer(text)]
        outside = _FENCE.sub("", text)
        commands += [c for block in blocks for c in commands_in(block, page)]
        commands += [c for span in _INLINE.findall(outside) for c in commands_in(span, page)]
    return commands


def script_paths():
    return sorted(
        os.path.relpath(path, REPO_ROOT) for pattern in SCRIPT_GLOBS for path in glob.glob(os.path.join(REPO_ROOT, pattern))
    )


def docstring_commands():
    commands = []
    for path in script_paths():
        with open(os.path.join(REPO_ROOT, path)) as f:
            docstring = ast.get_docstring(ast.parse(f.read())) or ""
        commands += commands_in(docstring, path)
    return commands


DOCUMENTED = readme_commands() + docstring_commands()


@functools.lru_cache(maxsize=None)
def _script(path):
    """The script imported as ``python <path>`` would run it: with its own folder first on sys.path."""
    folder = os.path.join(REPO_ROOT, os.path.dirname(path))
    sys.path.insert(0, folder)
    try:
        return load_script(path, "documented_" + re.sub(r"\W", "_", path))
    finally:
        sys.path.remove(folder)


def test_commands_are_found_in_code_blocks_inline_code_and_docstrings():
    text = "x\n    FOO=1 .venv/bin/python tools/a.py --b c \\\n        d=1 [--e F]  # note\n`python train_net.py x=1`\n"
    assert commands_in(text, "t") == [
        ("t", "tools/a.py", ["--b", "c", "d=1"]),
        ("t", "tools/a.py", ["--b", "c", "d=1", "--e", "F"]),
    ]
    where = {(w, s) for w, s, _ in DOCUMENTED}
    assert ("docs/benchmarks.md", "tools/sweep_keep_ratio.py") in where and ("README.md", "train_net.py") in where
    assert ("tools/sweep_keep_ratio.py", "tools/sweep_keep_ratio.py") in where
    assert ("demo/demo.py", "demo/demo.py") in where


@pytest.mark.parametrize("path", script_paths())
def test_every_script_exposes_parse_args(path):
    assert callable(getattr(_script(path), "parse_args", None)), f"{path} has no parse_args(argv)"


@pytest.mark.parametrize(
    "where, script, argv", DOCUMENTED, ids=[f"{w}:{s} {' '.join(a)}"[:120] for w, s, a in DOCUMENTED]
)
def test_documented_command_is_accepted(where, script, argv, capsys):
    from focus_detr.engine import load_config

    try:
        args = _script(script).parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"{where}: `{script} {' '.join(argv)}` is refused: {capsys.readouterr().err.strip()} ({exit})")
    config_file = getattr(args, "config_file", None)
    if config_file and os.path.isfile(os.path.join(REPO_ROOT, config_file)):
        load_config(os.path.join(REPO_ROOT, config_file), getattr(args, "opts", []))  # unknown keys raise


def test_overrides_between_multi_value_options_reach_the_config(capsys):
    sweep = _script("tools/sweep_keep_ratio.py")
    args = sweep.parse_args(
        ["--config-file", "c.py", "--keep-ratios", "0.2", "0.3", "train.init_checkpoint=w.pth", "--no-dense",
         "--output", "out=1", "train.seed=3"]
    )
    assert args.keep_ratios == [0.2, 0.3] and args.no_dense and args.output == "out=1"
    assert args.opts == ["train.init_checkpoint=w.pth", "train.seed=3"]
