"""The ``flowlake`` command: a typer app over the public store API.

Store errors become one red line on standard error and exit status 1; bad usage exits 2 (typer);
a closed pipe (``flowlake ... | head``) ends the command quietly with status 141.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections import Counter
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

import store
from store.durations import parse_duration
from store.errors import InvalidArgumentError, LakeNotFoundError, StoreError
from store.model import MergeStrategy
from ui import help as _help  # noqa: F401 - flags show no <bool> in --help
from ui import internal, render
from ui.cli_compute import register as register_compute
from ui.cli_data import cat_command, get_command, ls_command, put_command
from ui.cli_deploy import register as register_deploy_commands
from ui.cli_gatehook import register as register_gate_hook_commands
from ui.cli_policy import register as register_policy_commands
from ui.cli_tracking import runs_group, sql_command
from ui.demo import run_demo
from ui.options import (
    DEFAULT_LAKE,
    BranchOption,
    JsonOption,
    LakeOption,
    NamespaceOption,
    ShowAllOption,
    open_lake,
)

#: The exit status of a command whose reader went away (``flowlake ... | head``): 128 + SIGPIPE,
#: what a shell reports for a writer the pipe's signal ended.
BROKEN_PIPE_EXIT = 141


def _stdout_gone() -> typer.Exit:
    """The reader of standard output left: point it at /dev/null, so the flush at exit cannot
    fail again and print a traceback, and end quietly (as ``ls | head`` does)."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (a test's buffer)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return typer.Exit(BROKEN_PIPE_EXIT)


def _rich_broken_pipe(exc: SystemExit) -> bool:
    """Whether ``exc`` is rich's ``Console.on_broken_pipe`` ending the program."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].name == "on_broken_pipe"


class FlowlakeGroup(TyperGroup):
    """The command group; translates store and local file errors at the CLI boundary, and ends
    quietly when standard output's reader goes away."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except SystemExit as exc:
            # rich (help, tables) already silenced stdout on a broken pipe, but exits 1: the
            # status of a failed command. Say what happened instead.
            if _rich_broken_pipe(exc):
                raise SystemExit(BROKEN_PIPE_EXIT) from None
            raise
        finally:
            # Output still buffered (print() into a pipe) is written only now.
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                raise SystemExit(_stdout_gone().exit_code) from None

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:  # --help and --version print while the context is made
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            raise _stdout_gone() from None

    def invoke(self, ctx: Any) -> Any:  # the Context base class typer passes is private
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise _stdout_gone() from None
        except (StoreError, OSError) as exc:
            render.error_line(str(exc) or type(exc).__name__)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=FlowlakeGroup,
    name="flowlake",
    help="Branchable data, model and experiment store for continuous delivery of ML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
branch_app = typer.Typer(help="Create, list and delete branches.", no_args_is_help=True)
app.add_typer(branch_app, name="branch")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"flowlake {version('flowlake')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print flowlake's version and exit.",
        ),
    ] = False,
) -> None:
    """Branchable data, model and experiment store for continuous delivery of ML."""


class Strategy(StrEnum):
    """How ``merge`` resolves conflicting paths."""

    SOURCE_WINS = "source-wins"
    DEST_WINS = "dest-wins"


MetaOption = Annotated[
    list[str] | None,
    typer.Option("--meta", help="Commit metadata as KEY=VALUE (repeatable)."),
]


def parse_metadata(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``.

    Raises:
        typer.BadParameter: an item without ``=`` or with an empty key.
    """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        out[key] = value
    return out


def parse_retention(text: str) -> timedelta:
    """``"6h"`` -> 6 hours, spelled as :func:`store.durations.parse_duration` reads it.

    Raises:
        typer.BadParameter: not a number with a unit.
    """
    try:
        return parse_duration(text)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(str(exc), param_hint="--retention") from None


# -- lake --------------------------------------------------------------------------------------


@app.command("init")
def init_command(
    lake: LakeOption = DEFAULT_LAKE,
    objects: Annotated[
        str | None,
        typer.Option(help="Embedded lakes: fsspec URL for the objects (default: inside the lake)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a lake (nothing happens when one is there already)."""
    options: dict[str, Any] = {"objects": objects} if objects else {}
    try:
        opened = store.open(lake, create=False, **options)
        created = False
    except LakeNotFoundError:
        opened = store.open(lake, create=True, **options)
        created = True
    with opened:
        head = opened.commit("main")
    if as_json:
        render.emit_json({"location": lake, "created": created, "main": head.id})
        return
    verb = "created" if created else "found existing"
    render.stdout().print(Text(f"{verb} lake at {lake} (main at {render.short(head.id)})"))


# -- branches ----------------------------------------------------------------------------------


@branch_app.command("create")
def branch_create(
    name: Annotated[str, typer.Argument(help="Branch name; bare names go in your namespace.")],
    source: Annotated[str, typer.Option(help="Ref to branch from.")] = "main",
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a branch (O(1): it shares its source's tree)."""
    with open_lake(lake, namespace) as opened:
        created = opened.branch(name, source=source)
        head = created.head()
    if as_json:
        render.emit_json(
            {
                "name": created.name,
                "namespace": created.namespace,
                "head": head.id,
                "source": source,
            }
        )
        return
    render.stdout().print(
        Text(f"created branch {created.name} at {render.short(head.id)} (from {source})")
    )


@branch_app.command("list")
def branch_list(
    all_namespaces: Annotated[
        bool, typer.Option("--all", "-a", help="Every namespace, not just yours and production.")
    ] = False,
    include_scratch: Annotated[
        bool,
        typer.Option(
            "--include-scratch", help="Also transactions' scratch branches (hidden otherwise)."
        ),
    ] = False,
    runs: Annotated[
        bool,
        typer.Option(
            "--runs",
            help="Also tracking runs' branches and jobs' job-<id> branches (counted otherwise).",
        ),
    ] = False,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List branches of your namespace and production (every namespace with --all); runs'
    and jobs' own branches are counted on one line unless --runs (--json lists them)."""
    with open_lake(lake, namespace) as opened:
        branches = opened.branches(all_namespaces=all_namespaces, include_scratch=include_scratch)
        current = opened.namespace
    if as_json:
        render.emit_json([render.branch_json(info) for info in branches])
        return
    run_branches = 0 if runs else sum(internal.is_run_branch(b.name) for b in branches)
    job_branches = 0 if runs else sum(internal.is_job_branch(b.name) for b in branches)
    shown = [
        b
        for b in branches
        if runs or not (internal.is_run_branch(b.name) or internal.is_job_branch(b.name))
    ]
    out = render.stdout()
    out.print(render.branches_table(shown, current))
    if run_branches or job_branches:
        out.print(internal.folded_runs_line(run_branches, job_branches))


@branch_app.command("delete")
def branch_delete(
    name: Annotated[str, typer.Argument(help="Branch to delete.")],
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a branch and its uncommitted changes (protected branches refuse)."""
    with open_lake(lake, namespace) as opened:
        full_name = opened.get_branch(name).name
        opened.delete_branch(full_name)
    if as_json:
        render.emit_json({"deleted": full_name})
        return
    render.stdout().print(Text(f"deleted branch {full_name}"))


app.command("ls")(ls_command)
app.command("cat")(cat_command)
app.command("put")(put_command)
app.command("get")(get_command)

# -- history -----------------------------------------------------------------------------------


@app.command("commit")
def commit_command(
    branch: BranchOption,
    message: Annotated[str, typer.Option("--message", "-m", help="Commit message.")],
    meta: MetaOption = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Commit a branch's uncommitted changes."""
    metadata = parse_metadata(meta)
    with open_lake(lake, namespace) as opened:
        handle = opened.get_branch(branch)
        commit = handle.commit(message, metadata=metadata)
    if as_json:
        render.emit_json({"branch": handle.name, **render.commit_json(commit)})
        return
    render.stdout().print(render.commit_line(f"committed to {handle.name}", commit))


@app.command("log")
def log_command(
    ref: Annotated[str, typer.Argument(help="Branch, tag or commit to start from.")] = "main",
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many.")] = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the commits reachable from a ref, newest first."""
    with open_lake(lake, namespace) as opened:
        commits = opened.log(ref, limit=limit)
        tags = opened.tags()
    if as_json:
        render.emit_json([render.commit_json(commit) for commit in commits])
        return
    render.stdout().print(render.commits_table(commits, tags, f"log of {ref}"))


@app.command("diff")
def diff_command(
    left: Annotated[str, typer.Argument(help="Ref to compare from (alone: a branch).")],
    right: Annotated[str | None, typer.Argument(help="Ref to compare to.")] = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
    show_all: ShowAllOption = False,
) -> None:
    """Committed changes from LEFT to RIGHT; with LEFT alone, that branch's uncommitted ones."""
    with open_lake(lake, namespace) as opened:
        if right is None:
            changes = opened.get_branch(left).uncommitted()
            title = f"uncommitted changes on {left}"
        else:
            changes = opened.diff(left, right)
            title = f"changes from {left} to {right}"
    if as_json:
        render.emit_json(
            {"left": left, "right": right, "changes": [render.change_json(c) for c in changes]}
        )
        return
    shown, hidden = internal.fold(changes, lambda c: c.path, show_all=show_all)
    console = render.stdout()
    if shown:
        console.print(render.changes_table(shown, title))
    else:
        console.print(Text(f"no {title}" + (" outside _flowlake/" if hidden else ""), style="dim"))
    if hidden:
        console.print(internal.folded_line(hidden, "changes"))


@app.command("merge")
def merge_command(
    source: Annotated[str, typer.Argument(help="Branch or commit to merge.")],
    into: Annotated[str, typer.Option(help="Branch to merge into.")] = "main",
    strategy: Annotated[
        Strategy | None, typer.Option(help="Resolve conflicts to one side (default: fail).")
    ] = None,
    message: Annotated[str | None, typer.Option("--message", "-m")] = None,
    meta: MetaOption = None,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Three-way merge SOURCE into a branch (the only way to change main)."""
    metadata = parse_metadata(meta)
    with open_lake(lake, namespace) as opened:
        commit = opened.merge(
            source,
            into=into,
            strategy=cast("MergeStrategy", strategy.value) if strategy else None,
            message=message,
            metadata=metadata,
        )
    if as_json:
        render.emit_json({"into": into, **render.commit_json(commit)})
        return
    render.stdout().print(render.commit_line(f"merged {source} into {into}", commit))


@app.command("tag")
def tag_command(
    name: Annotated[str | None, typer.Argument(help="Tag to create (none: list tags).")] = None,
    ref: Annotated[str, typer.Argument(help="Ref the new tag names.")] = "main",
    delete: Annotated[bool, typer.Option("--delete", "-d", help="Delete tag NAME.")] = False,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tag a commit, delete a tag with -d, or list tags when no NAME is given."""
    if delete and name is None:
        raise typer.BadParameter("-d needs the tag NAME", param_hint="NAME")
    with open_lake(lake, namespace) as opened:
        if name is None:
            _show_tags(opened, as_json)
        elif delete:
            opened.delete_tag(name)
            if as_json:
                render.emit_json({"deleted": name})
            else:
                render.stdout().print(Text(f"deleted tag {name}"))
        else:
            tagged = opened.tag(name, ref)
            if as_json:
                render.emit_json({"name": name, "commit": render.commit_json(tagged)})
            else:
                render.stdout().print(render.commit_line(f"tagged {ref} as {name}", tagged))


def _show_tags(opened: store.Lake, as_json: bool) -> None:
    tags = opened.tags()
    if as_json:
        render.emit_json([{"name": n, "commit": c} for n, c in sorted(tags.items())])
        return
    commits = {cid: opened.commit(cid) for cid in set(tags.values())}
    render.stdout().print(render.tags_table(tags, commits))


@app.command("revert")
def revert_command(
    commit: Annotated[str, typer.Argument(help="Commit whose changes to undo.")],
    branch: BranchOption,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a commit to a branch that undoes what COMMIT changed."""
    with open_lake(lake, namespace) as opened:
        reverted = opened.revert(branch, commit)
    if as_json:
        render.emit_json({"branch": branch, **render.commit_json(reverted)})
        return
    render.stdout().print(render.commit_line(f"reverted {commit} on {branch}", reverted))


# -- maintenance -----------------------------------------------------------------------------------


@app.command("fsck")
def fsck_command(lake: LakeOption = DEFAULT_LAKE, as_json: JsonOption = False) -> None:
    """Check the integrity of every object the lake references; exit 1 on problems."""
    with open_lake(lake, None) as opened:
        problems = opened.fsck()
    if as_json:
        render.emit_json({"ok": not problems, "problems": problems})
    elif problems:
        for problem in problems:
            render.error_line(problem)
    else:
        render.stdout().print(Text("lake is healthy: every object verified", style="green"))
    if problems:
        raise typer.Exit(1)


@app.command("gc")
def gc_command(
    retention: Annotated[
        str,
        typer.Option(help="Keep unreachable data younger than this (90s, 30m, 6h, 7d, 1w)."),
    ] = "6h",
    exclusive_objects: Annotated[
        bool,
        typer.Option(
            "--exclusive-objects",
            help="The lake's objects are external (s3://, a folder outside the lake) and no "
            "other lake uses that location: let gc delete there.",
        ),
    ] = False,
    lake: LakeOption = DEFAULT_LAKE,
    as_json: JsonOption = False,
) -> None:
    """Remove data no ref or uncommitted change reaches, once older than the retention, and
    the scratch branches of transactions whose process is provably gone.

    Safe beside running writers at any retention: gc and writers share a lock, and a live
    transaction's scratch branch is never deleted. On lakeFS only scratch branches are deleted
    (lakeFS collects objects itself).
    """
    from store.backend import CAP_GC
    from store.scratch import YOUNGER, kept_because, parse

    window = parse_retention(retention)
    with open_lake(lake, None) as opened:
        dropped = [s.name for s in opened.reclaim_transactions(window)]
        collects = CAP_GC in opened.backend.capabilities
        removed = opened.gc(window, exclusive_objects=exclusive_objects) if collects else None
        kept = {}
        for info in opened.branches(all_namespaces=True, include_scratch=True):
            found = parse(info.name)
            if found is not None and info.name not in dropped:
                why = kept_because(found.owner, window)
                kept[info.name] = why or "this user may not delete it"
    if as_json:
        render.emit_json(
            {
                "removed": removed,
                "retention_seconds": window.total_seconds(),
                "scratch_branches_deleted": dropped,
                "scratch_branches_kept": kept,
            }
        )
        return
    if removed is None:
        render.stdout().print(Text("objects: this backend collects its garbage itself"))
    else:
        render.stdout().print(Text(f"removed {removed} unreachable objects"))
    line = f"deleted {len(dropped)} scratch branches of dead transactions"
    if kept:
        reasons = Counter(kept.values())
        line += (
            f"; kept {len(kept)} ("
            + ", ".join(
                (f"younger than the retention {retention}" if why == YOUNGER else why)
                + f": {count}"
                for why, count in sorted(reasons.items())
            )
            + ")"
        )
    render.stdout().print(Text(line))


# -- demo --------------------------------------------------------------------------------------


@app.command("demo")
def demo_command(
    path: Annotated[Path, typer.Option(help="Folder for the demo lake.")] = Path("demo-lake"),
    fresh: Annotated[
        bool, typer.Option(help="Wipe an existing demo lake there and start over.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only a JSON summary of the outcome.")
    ] = False,
) -> None:
    """Walk a small continuous-delivery story on a fresh demo lake."""
    console = Console(quiet=True) if as_json else render.stdout()
    result = run_demo(path, console, fresh=fresh)
    if as_json:
        render.emit_json(result.as_json())


app.add_typer(runs_group, name="runs")
app.command("sql")(sql_command)
register_compute(app)
register_deploy_commands(app)
register_policy_commands(app)
register_gate_hook_commands(app)


if __name__ == "__main__":
    app()
