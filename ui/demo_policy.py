"""The demo's policy chapter: only CI promotes, through the gates, and the audit log proves it.

Before the live trial, ``ops`` merges a policy into ``main`` (production is written only by the
``release`` group, which holds ``ops`` and the CI token; two metric gates guard ``main``) and
creates the CI token with the least scopes the trial needs (:data:`CI_SCOPES`: ``write`` for the
deployment branches, ``promote`` for the merge into ``main``). The trial then runs with the
token in the environment, as CI would, so the winner's promotion passes through the gates;
afterwards the loser's promotion is refused with the failing condition and the audit chain is
verified.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

import store
from store.errors import GateFailedError
from store.policy import api
from store.policy.model import POLICY_PATH
from ui import render

if TYPE_CHECKING:
    from ui.demo import Candidate

ADMIN = "ops"
COMMIT_ID = re.compile(r"[0-9a-f]{64}")
POLICY = """\
version = 1

[groups]
release = ["user:ops", "token:ci"]

[perimeters.production]
principals = ["group:release"]
write = ["production/**", "user:*/**", "team:*/**"]

[perimeters.staging]
principals = ["*"]
write = ["user:*/**", "team:*/**", "production/deploy-*"]

[[gates]]
metric = "accuracy >= production.accuracy - 0.002"

[[gates]]
metric = "accuracy >= 0.97"
"""
#: What CI's token may do, and no more (docs/policy.md, "Machine tokens").
CI_SCOPES = ("promote", "write")


@contextmanager
def ci_policy(location: str, console: Console, cli: str) -> Iterator[None]:
    """Install the policy and a CI token; inside the block the process acts as CI
    (``FLOWLAKE_TOKEN`` set); it is unset again on the way out."""
    console.rule("policy: only CI promotes, through the gates")
    with store.open(location, namespace="production", user=ADMIN) as lake:
        branch = lake.branch(f"user:{ADMIN}/policy")
        branch.write_bytes(POLICY_PATH, POLICY.encode())
        branch.commit("policy: production written only by release; gates on main")
        lake.merge(branch.name, into="main", message="Adopt the promotion policy")
        lake.delete_branch(branch.name)
    console.print(Text(f"{ADMIN} merged {POLICY_PATH} into main:", style="bold"))
    console.print(Text(POLICY, style="dim"))
    with store.open(location, user=ADMIN, perimeter="production") as lake:
        secret, record = api.create_token(lake, "ci", "production", "30d", CI_SCOPES)
    scopes = " ".join(f"--scope {scope}" for scope in CI_SCOPES)
    render.command_line(
        console,
        f"FLOWLAKE_USER={ADMIN} FLOWLAKE_PERIMETER=production {cli} token create "
        f"--name ci --perimeter production --expires 30d {scopes} --lake {location}",
        prefix="$ ",
    )
    console.print(
        f"token {record.name} for perimeter {record.perimeter} with scopes "
        f"{', '.join(record.scopes)} only, expires {record.expires:%Y-%m-%d}; its secret "
        f"({secret[:8]}...) goes to CI's secrets only"
    )
    console.print("From here on the demo acts as CI: FLOWLAKE_TOKEN is set in its environment.")
    before = os.environ.get("FLOWLAKE_TOKEN")
    os.environ["FLOWLAKE_TOKEN"] = secret
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FLOWLAKE_TOKEN", None)
        else:
            os.environ["FLOWLAKE_TOKEN"] = before


def refused_and_audited(
    location: str,
    candidates: list[Candidate],
    promoted: Candidate | None,
    console: Console,
    cli: str,
) -> None:
    """Try to promote every candidate but the winner (as CI); show the refusal; verify the
    audit chain."""
    console.rule("policy: a refused promotion and the audit log")
    with store.open(location) as lake:
        for candidate in candidates:
            if promoted is not None and candidate.branch == promoted.branch:
                continue
            render.command_line(
                console, f"{cli} merge {candidate.branch} --into main --lake {location}", "$ "
            )
            try:
                lake.merge(candidate.branch, into="main")
            except GateFailedError as exc:
                for failure in exc.failures:
                    console.print(Text(f"refused: {failure}", style="red"))
            else:  # pragma: no cover - the demo's numbers make the loser fail
                console.print(Text(f"{candidate.branch} passed every gate", style="yellow"))
        render.command_line(console, f"{cli} audit --verify --lake {location}", "\n$ ")
        log = Table(box=None, show_header=False, pad_edge=False)
        log.add_column("seq", justify="right", no_wrap=True)
        log.add_column("actor", no_wrap=True)
        log.add_column("action", no_wrap=True)
        log.add_column("details", overflow="fold")
        for entry in api.audit_log(lake):
            details = ", ".join(
                f"{k}={_shown(v)}" for k, v in entry.details.items() if not k.startswith("gate.")
            )
            log.add_row(str(entry.seq), entry.actor, entry.action, Text(details))
        console.print(log)
        problems = api.verify_audit(lake)
    if problems:
        for problem in problems:
            console.print(Text(problem, style="red"))
    else:
        console.print(Text("audit chain intact", style="green"))


def _shown(value: object) -> str:
    """An audit value in full, except commit ids: their short form, as everywhere in the CLI."""
    text = str(value)
    return render.short(text) if COMMIT_ID.fullmatch(text) else text
