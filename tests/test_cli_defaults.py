"""The CLI takes every default from trainleak.config: none is repeated, so none can drift."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import trainleak.cli
from trainleak.cli import build_parser
from trainleak.cli.common import EMBEDDING_GROUP
from trainleak.cli.membership import parse_timesteps
from trainleak.config import (
    AuditConfig,
    CheckConfig,
    DedupConfig,
    EvidenceConfig,
    ExtractConfig,
    IndexConfig,
    InvertConfig,
    LossConfig,
    MembershipConfig,
    ReviewConfig,
    ServeConfig,
)

#: Each subcommand's configs; a new subcommand must be added here, a nested
#: one as "command action" (e.g. "index build").
CONFIGS: dict[str, tuple[Any, ...]] = {
    "audit": (AuditConfig(),),
    "dedup": (DedupConfig(),),
    "evidence": (EvidenceConfig(),),
    "extract": (ExtractConfig(),),
    "invert": (InvertConfig(),),
    "membership": (MembershipConfig(), LossConfig()),
    "index": (),
    "index build": (IndexConfig(),),
    "index add": (CheckConfig(),),
    "index remove": (),
    "index info": (),
    "index compact": (),
    "index add-decisions": (),
    "check": (CheckConfig(),),
    "serve": (ServeConfig(), ServeConfig().check),
    "review": (ReviewConfig(),),
    "demo": (),
}

#: Options whose text default the command parses into the config's value.
PARSERS = {("membership", "timesteps"): parse_timesteps}


def subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand parser by name, nested ones as ``"command action"``."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[prefix + name] = sub
                found.update(subcommands(sub, f"{prefix}{name} "))
    return found


def field_defaults(config: Any) -> dict[str, Any]:
    """A config instance's fields and their values."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def drift(parser: argparse.ArgumentParser) -> list[str]:
    """Every option whose default differs from the config field of its dest.

    Options in the embedding group are compared with the config's ``embed``
    field, the others with the config's own fields.
    """
    found = []
    for name, sub in subcommands(parser).items():
        embedding_actions = {
            id(a)
            for g in sub._action_groups
            if g.title == EMBEDDING_GROUP
            for a in g._group_actions
        }
        for config in CONFIGS.get(name, ()):  # a missing name fails the coverage test
            top = field_defaults(config)
            inner = field_defaults(config.embed) if "embed" in top else {}
            for action in sub._actions:
                fields = inner if id(action) in embedding_actions else top
                if action.dest not in fields:
                    continue
                default = action.default
                convert = PARSERS.get((name, action.dest))
                if convert is not None and isinstance(default, str):
                    default = convert(default)
                want = fields[action.dest]
                if default != want or type(default) is not type(want):
                    option = "/".join(action.option_strings) or action.dest
                    cls = type(config).__name__
                    found.append(f"{name} {option}: {default!r}, {cls}.{action.dest} {want!r}")
    return found


def test_every_subcommand_has_its_configs_listed():
    assert set(subcommands(build_parser())) == set(CONFIGS)


def test_option_defaults_are_the_config_defaults():
    assert drift(build_parser()) == []


def test_options_cover_the_settings_users_tune():
    """The check compares something: the options it must see are there, under their field names."""
    seen = {
        name: {a.dest for a in sub._actions} for name, sub in subcommands(build_parser()).items()
    }
    assert {"fpr", "threshold", "k", "score", "search_device", "batch_size", "workers"} <= seen[
        "audit"
    ]
    assert {"threshold", "k", "encoder", "max_pixels"} <= seen["dedup"]
    assert {"delta", "min_clique", "samples_per_prompt", "relative", "seed"} <= seen["extract"]
    assert {"method", "steps", "mean", "std", "batch_size", "identity"} <= seen["invert"]
    assert {"n_samples", "top_m", "score", "gen_batch_size", "n_boot", "timesteps"} <= seen[
        "membership"
    ]
    assert "noise_seeds" in seen["membership"]


@pytest.mark.parametrize(
    ("command", "option", "literal"),
    [("dedup", "--k", 12), ("audit", "--fpr", 0.01), ("extract", "--encoder", "pixel")],
)
def test_a_different_literal_is_caught(command, option, literal):
    parser = build_parser()
    sub = subcommands(parser)[command]
    action = next(a for a in sub._actions if option in a.option_strings)
    action.default = literal
    assert any(line.startswith(f"{command} {option}") for line in drift(parser))


def test_no_literal_defaults_in_the_cli_source():
    """``default=`` in the CLI is a config field, a named constant, None or []: never 16 or 0.15."""
    root = Path(trainleak.cli.__file__).parent
    literals = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                value = kw.value
                if (
                    kw.arg == "default"
                    and isinstance(value, ast.Constant)
                    and value.value is not None
                ):
                    literals.append(f"{path.name}:{node.lineno} default={value.value!r}")
    assert literals == []


def test_help_imports_no_numpy_torch_or_audit():
    """``trainleak --help`` stays quick: building every parser loads no numeric code."""
    code = (
        "import sys, contextlib, io\n"
        "from trainleak.cli import COMMANDS, main\n"
        "for argv in [['--help']] + [[c.__name__.rsplit('.', 1)[1], '--help'] for c in COMMANDS]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = ('numpy', 'torch', 'PIL', 'dlib', 'tqdm', 'trainleak.audits', 'trainleak.image')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("entry", [["-m", "trainleak.cli"], ["-m", "trainleak.cli", "audit"]])
def test_python_dash_m_runs_the_cli(entry):
    proc = subprocess.run(
        [sys.executable, *entry, "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "usage: trainleak" in proc.stdout
