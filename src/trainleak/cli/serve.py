"""``trainleak serve``: answer ``check`` over HTTP, with auth, limits and micro-batching."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import stat
from typing import Any, get_args

from trainleak.cli.common import (
    DECISIONS_HELP,
    EXIT_OK,
    UsageError,
    add_embed_arguments,
    embed_config,
    positive_int,
)
from trainleak.config import CheckConfig, IndexSearch, ServeConfig

#: Environment variables holding the check and admin tokens.
TOKEN_ENV, ADMIN_TOKEN_ENV = "TRAINLEAK_TOKEN", "TRAINLEAK_ADMIN_TOKEN"


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the subcommands ``sub``; defaults come from :class:`ServeConfig`."""
    d = ServeConfig()
    s: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="answer 'check' over HTTP (POST /v1/check)",
        description="Serve an index over HTTP: POST /v1/check (multipart 'file'), GET /healthz, "
        "GET /v1/index, GET /metrics, POST /v1/index/add (admin token). A bearer token is "
        f"required: {TOKEN_ENV} or --token-file (--no-auth only on a loopback address). "
        "Stop with Ctrl-C or SIGTERM: requests in flight are answered first.",
    )
    s.add_argument("--index", required=True, help="the index folder ('trainleak index build')")
    s.add_argument("--host", default=d.host, help="address to bind (default: %(default)s)")
    s.add_argument("--port", type=_port, default=d.port, help="TCP port (default: %(default)s)")
    a = s.add_argument_group("security")
    a.add_argument("--token-file", help=f"file holding the bearer token (else ${TOKEN_ENV})")
    a.add_argument(
        "--admin-token-file",
        help=f"file holding the admin token for POST /v1/index/add (else ${ADMIN_TOKEN_ENV}); "
        "without one that route is off",
    )
    a.add_argument(
        "--no-auth", action="store_true", help="no token for checks (loopback addresses only)"
    )
    a.add_argument(
        "--max-upload-mb",
        type=_positive,
        default=d.max_upload_mb,
        help="request body limit, counted while it streams in (default: %(default)s)",
    )
    a.add_argument(
        "--rate-limit",
        type=_non_negative,
        default=d.rate_limit,
        help="requests per second per token (per address without auth); 0 = off "
        "(default: %(default)s)",
    )
    q = s.add_argument_group("batching and queue")
    q.add_argument(
        "--max-batch",
        type=positive_int,
        default=d.max_batch,
        help="images embedded together; 1 = no micro-batching (default: %(default)s)",
    )
    q.add_argument(
        "--max-wait-ms",
        type=_non_negative,
        default=d.max_wait_ms,
        help="wait this long for more requests to fill a batch (default: %(default)s)",
    )
    q.add_argument(
        "--queue-size",
        type=positive_int,
        default=d.queue_size,
        help="requests waiting for the encoder; more get 503 (default: %(default)s)",
    )
    q.add_argument(
        "--queue-mb",
        type=_positive,
        default=d.queue_mb,
        help="megabytes of uploads waiting; more get 503 (default: %(default)s)",
    )
    q.add_argument(
        "--request-timeout",
        type=_positive,
        default=d.request_timeout,
        help="seconds a request waits for its verdicts (default: %(default)s)",
    )
    q.add_argument(
        "--max-requests",
        type=positive_int,
        default=d.max_requests,
        help="requests answered at once; more get 503 (default: %(default)s)",
    )
    q.add_argument(
        "--max-connections",
        type=positive_int,
        default=d.max_connections,
        help="open connections; past it the oldest one not being answered is closed "
        "(default: %(default)s)",
    )
    q.add_argument(
        "--header-timeout",
        type=_positive,
        default=d.header_timeout,
        help="seconds a request's headers may take to arrive; slower ones get 408 "
        "(default: %(default)s)",
    )
    q.add_argument(
        "--body-timeout",
        type=_positive,
        default=d.body_timeout,
        help="seconds a request's body may take after its headers; slower ones get 408 "
        "(default: %(default)s)",
    )
    q.add_argument(
        "--decode-mpix",
        type=_positive,
        default=d.decode_mpix,
        help="megapixels of uploads decoded at once (bounds memory; default: %(default)s)",
    )
    q.add_argument(
        "--graceful-timeout",
        type=_positive,
        default=d.graceful_timeout,
        help="seconds a shutdown waits for requests in flight (default: %(default)s)",
    )
    s.add_argument("--access-log", action="store_true", help="log every request on stderr")
    s.add_argument(
        "--search",
        choices=get_args(IndexSearch),
        default=d.check.search,
        help="faiss, exact, or auto (default: %(default)s); same verdicts",
    )
    s.add_argument(
        "--decisions",
        default=d.check.decisions,
        help=DECISIONS_HELP + "; re-read while serving when it changes",
    )
    add_embed_arguments(s, d.check.embed, encoder=False)
    s.set_defaults(func=run)
    return s


def read_secret(path: str, what: str) -> str:
    """Return the text of a file of secrets, refused unless only its owner may read it.

    Raises:
        UsageError: the file cannot be read, is readable by other users
            (say how to fix: ``chmod 600``), or is not UTF-8.

    """
    try:
        with open(path, encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if os.name == "posix" and mode & 0o077:
                raise UsageError(
                    f"the {what} file {path} can be read by other users (mode "
                    f"{stat.S_IMODE(mode):o}): make it private with: chmod 600 {path}"
                )
            return fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read the {what} file {path}: {err}") from None


def read_token(path: str | None, env: str, what: str) -> str | None:
    """Return the token from the file ``path`` or else the environment variable ``env``.

    Raises:
        UsageError: the file cannot be read, is readable by others, or holds no token.

    """
    if path is None:
        return os.environ.get(env) or None
    token = read_secret(path, what).strip()
    if not token:
        raise UsageError(f"the {what} file {path} is empty")
    return token


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak serve`` until stopped; return the exit code."""
    from trainleak.service import require_serve

    require_serve()
    from trainleak.service.guard import Tokens, check_bind
    from trainleak.service.serve import serve

    token = read_token(args.token_file, TOKEN_ENV, "token")
    admin = read_token(args.admin_token_file, ADMIN_TOKEN_ENV, "admin token")
    if args.no_auth and token:
        raise UsageError("--no-auth with a token: give one or the other")
    if not args.no_auth and not token:
        raise UsageError(
            f"a token is required: set {TOKEN_ENV} or pass --token-file "
            "(or --no-auth on a loopback address)"
        )
    try:
        tokens = Tokens(token, admin)
        check_bind(args.host, tokens)
    except ValueError as err:
        raise UsageError(str(err)) from None
    embed = embed_config(args, ServeConfig().check.embed)
    config = ServeConfig(
        check=CheckConfig(embed=embed, search=args.search, decisions=args.decisions),
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        rate_limit=args.rate_limit,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        queue_mb=args.queue_mb,
        request_timeout=args.request_timeout,
        max_requests=args.max_requests,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        decode_mpix=args.decode_mpix,
        graceful_timeout=args.graceful_timeout,
        access_log=args.access_log,
    )
    # uvicorn re-raises the Ctrl-C it handled after a graceful stop: a clean end.
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.index, config, tokens)
    return EXIT_OK
