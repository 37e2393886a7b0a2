"""The embedding flags are declared once (cli/common.py) and resolved once (``embed_config``).

``check``, ``index add`` and ``serve`` take the index's encoder, so they get
the runtime flags only; every flag a command has reads as ``audit``'s does,
and each command's flags resolve to the :class:`EmbedConfig` it ran with
before (``serve`` keeps no cache unless ``--cache`` names one).
"""

from __future__ import annotations

import argparse

from test_cli_defaults import subcommands

from trainleak.cli import build_parser
from trainleak.cli.common import EMBEDDING_GROUP, embed_config
from trainleak.config import CheckConfig, EmbedConfig, ServeConfig

RUNTIME = {"--workers", "--batch-size", "--cache", "--max-pixels"}
ENCODER = {"--encoder", "-O", "--aligned", "--all-faces", "--identity-depth", "--max-file-mb"}


def _group(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    (g,) = [g for g in p._action_groups if g.title == EMBEDDING_GROUP]
    return {s: a for a in g._group_actions for s in a.option_strings}


def test_every_command_declares_the_embedding_flags_alike() -> None:
    commands = subcommands(build_parser())
    audit = _group(commands["audit"])
    for name in ("check", "index add", "serve", "index build", "dedup", "evidence", "membership"):
        flags = _group(commands[name])
        assert set(flags) >= RUNTIME, name
        for flag, action in flags.items():
            if flag in audit and (flag != "--cache" or name != "serve"):
                assert action.help == audit[flag].help, (name, flag)
    for name in ("check", "index add", "serve"):  # the encoder comes from the index
        assert not ENCODER & set(_group(commands[name])), name


def test_flags_resolve_to_the_config_each_command_ran_with() -> None:
    p = build_parser()
    check = p.parse_args(["check", "--index", "IDX", "a.png", "--workers", "2", "--no-cache"])
    assert embed_config(check, CheckConfig().embed) == EmbedConfig(workers=2, no_cache=True)
    serve = p.parse_args(["serve", "--index", "IDX", "--batch-size", "8"])
    assert embed_config(serve, ServeConfig().check.embed) == EmbedConfig(
        batch_size=8, no_cache=True
    )
    kept = p.parse_args(["serve", "--index", "IDX", "--cache", "/tmp/c"])
    assert embed_config(kept, ServeConfig().check.embed) == EmbedConfig(cache="/tmp/c")
    audit = p.parse_args(["audit", "--train", "t", "--synthetic", "s", "--encoder", "pixel",
                          "-O", "size=16", "--max-file-mb", "5",
                          "--identity-depth", "2"])  # fmt: skip
    assert embed_config(audit) == EmbedConfig(
        encoder="pixel", encoder_options={"size": 16}, max_file_mb=5, identity_depth=2
    )
