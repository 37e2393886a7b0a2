"""Reports made for the review tests: a real audit of ORL faces and COIL objects.

train: ORL s1-s6, photos 1-5 (a sub-folder per person). synthetic: exact
copies of four training photos (planted leaks), photos 6-7 of s1-s3 (the same
people, other photos: not copies) and four COIL objects (nothing in common).
The pixel encoder flags the four copies at its default threshold.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from trainleak import audit
from trainleak.config import AuditConfig, EmbedConfig

from conftest import COIL, ORL

#: The reviewers of the test servers and their tokens (each signs with their own).
TOKENS = {"ana": "ana-review-token-0123456789", "bob": "bob-review-token-0123456789"}
LOCAL = "http://127.0.0.1:8765"

COPIES = [(1, 1), (2, 2), (3, 3), (4, 4)]
SAME_PEOPLE = [(s, p) for s in (1, 2, 3) for p in (6, 7)]
OBJECTS = [1, 5, 9, 13]


def make_folders(root: Path, formula_name: bool = False) -> dict[str, Path]:
    """Copy the scene's files under ``root`` (copies, not links: hashes are of real bytes)."""
    train, synth = root / "train", root / "synthetic"
    for s in range(1, 7):
        (train / f"s{s}").mkdir(parents=True, exist_ok=True)
        for p in range(1, 6):
            shutil.copy(ORL / f"s{s}" / f"{p}.pgm", train / f"s{s}" / f"{p}.pgm")
    synth.mkdir(parents=True, exist_ok=True)
    for s, p in COPIES:
        name = f"=copy_s{s}_{p}.pgm" if formula_name and s == 1 else f"copy_s{s}_{p}.pgm"
        shutil.copy(ORL / f"s{s}" / f"{p}.pgm", synth / name)
    for s, p in SAME_PEOPLE:
        shutil.copy(ORL / f"s{s}" / f"{p}.pgm", synth / f"other_s{s}_{p}.pgm")
    for o in OBJECTS:
        shutil.copy(COIL / f"obj{o}__0.png", synth / f"obj{o}.png")
    return {"root": root, "train": train, "synthetic": synth}


def audit_config(cache: Path) -> AuditConfig:
    # score="nn": a copy is flagged by its nearest photo (identity scores blend in the
    # person's other photos, which the pixel encoder does not find alike).
    return AuditConfig(embed=EmbedConfig(encoder="pixel", workers=1, cache=str(cache)), score="nn")


def make_audit_report(
    root: Path,
    cache: Path,
    *,
    redact: bool = False,
    formula_name: bool = False,
    relative: bool = False,
) -> Path:
    """Run the audit on the scene and write its report to ``root/report``; return that folder.

    ``relative``: run it from ``root`` with relative folders, as a user in their
    project folder would, so the report names ``train/s1/2.pgm`` rather than
    a temporary path (the review page then needs ``base=root``).
    """
    folders = make_folders(root, formula_name)
    if relative:
        here = os.getcwd()
        os.chdir(root)
        try:
            result = audit(Path("train"), Path("synthetic"), config=audit_config(cache))
        finally:
            os.chdir(here)
    else:
        result = audit(folders["train"], folders["synthetic"], config=audit_config(cache))
    out = root / "report"
    result.write(out, redact=redact)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread, for the browser tests."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def reviewers() -> Any:
    """The test servers' :class:`~trainleak.service.review_auth.Reviewers` (ana and bob)."""
    from trainleak.service.review_auth import Reviewers

    return Reviewers(TOKENS)


def app_of(review: Any) -> Any:
    """The guarded review app of ``review``, with ana's and bob's tokens."""
    from trainleak.service.review_routes import create_app

    return create_app(review, reviewers())


def client(app_or_review: Any, who: str = "ana") -> Any:
    """A TestClient of the app (made from a Review if given one) carrying ``who``'s token."""
    from fastapi.testclient import TestClient

    from trainleak.service.review import Review

    app = app_of(app_or_review) if isinstance(app_or_review, Review) else app_or_review
    auth = {"Authorization": f"Bearer {TOKENS[who]}"}
    return TestClient(app, base_url=LOCAL, headers=auth)


def login(page: Any, url: str, who: str = "ana", then: str = "/") -> None:
    """Open the review page in a browser page as ``who``: ``/?token=`` once, then ``then``."""
    page.goto(f"{url}/?token={TOKENS[who]}")
    page.wait_for_selector("body[data-ready='1']")
    if then != "/":
        page.goto(url + then)
        page.wait_for_selector("body[data-ready='1']")
