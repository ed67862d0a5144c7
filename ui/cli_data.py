"""CLI commands that move data: ``ls``, ``cat``, ``put`` and ``get``.

Plain typer-annotated functions; :mod:`ui.cli` registers them on the app.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from store.folders import Skipped
from ui import internal, render, transfer
from ui.options import (
    DEFAULT_LAKE,
    BranchOption,
    JsonOption,
    LakeOption,
    NamespaceOption,
    RefOption,
    ShowAllOption,
    open_lake,
)

STDIN = "-"


def ls_command(
    prefix: Annotated[str, typer.Argument(help="Only objects whose path starts with this.")] = "",
    ref: RefOption = "main",
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
    show_all: ShowAllOption = False,
) -> None:
    """List objects at a ref (a branch shows its uncommitted changes too)."""
    with open_lake(lake, namespace) as opened:
        objects = opened.list(ref=ref, prefix=prefix)
    if as_json:
        render.emit_json([render.object_json(info) for info in objects])
        return
    shown, hidden = internal.fold(objects, lambda o: o.path, show_all=show_all, prefix=prefix)
    console = render.stdout()
    if not objects:  # like ls of an empty folder: not an error, but said in words, not a table
        where = f"under {prefix!r} " if prefix else ""
        console.print(Text(f"no objects {where}at {ref}", style="dim"))
        return
    console.print(render.objects_table(shown, ref))
    total = sum(info.size for info in shown)
    noun = "object" if len(shown) == 1 else "objects"
    console.print(Text(f"{len(shown)} {noun}, {render.human_size(total)}", style="dim"))
    if hidden:
        console.print(internal.folded_line(hidden, "objects"))


def cat_command(
    path: Annotated[str, typer.Argument(help="Object path in the lake.")],
    ref: RefOption = "main",
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
) -> None:
    """Write an object's bytes to standard output, streamed."""
    out = typer.get_binary_stream("stdout")
    with open_lake(lake, namespace) as opened, opened.open(path, ref) as src:
        try:
            while chunk := src.read(transfer.CHUNK):
                out.write(chunk)
            out.flush()
        except BrokenPipeError:
            _silence_stdout()


def _silence_stdout() -> None:
    """The reader went away (``flowlake cat ... | head``): stop without an error, like cat.

    Standard output is pointed at /dev/null so the interpreter's final flush does not fail.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def put_command(
    source: Annotated[str, typer.Argument(help="Local file, folder (with -r), or - for stdin.")],
    branch: BranchOption,
    dest: Annotated[
        str | None,
        typer.Argument(help="Path in the lake (default: the file's name; with -r: a prefix)."),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Import a whole folder.")
    ] = False,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Commit right away with this message.")
    ] = None,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="With -r, also follow links that leave the folder (loops are still skipped).",
        ),
    ] = False,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a local file, a folder or standard input to a branch (uncommitted unless -m).

    With -r, links that leave the folder, dangling links and special files are skipped and
    listed (a warning on standard error; "skipped" in --json). Lake folders inside the folder
    are never imported (one dim line each); a folder inside a lake is refused.
    """
    local = Path(source)
    target = _put_target(source, local, dest, recursive)
    skipped: tuple[Skipped, ...] = ()
    lake_folders: tuple[str, ...] = ()
    with open_lake(lake, namespace) as opened:
        handle = opened.get_branch(branch)
        if recursive:
            upload = transfer.put_dir(handle, local, target, follow_symlinks=follow_symlinks)
            moved = transfer.Transferred(upload.files, upload.bytes)
            skipped = upload.skipped
            lake_folders = tuple(os.path.join(source, rel) for rel in upload.lake_folders)
        elif source == STDIN:
            info = handle.write_file(target, typer.get_binary_stream("stdin"))
            moved = transfer.Transferred(1, info.size)
        else:
            info = transfer.put_file(handle, local, target)
            moved = transfer.Transferred(1, info.size)
        commit = handle.commit(message) if message else None
    if as_json:
        render.emit_json(
            {
                "branch": handle.name,
                "path": target,
                "files": moved.files,
                "bytes": moved.bytes,
                "commit": render.commit_json(commit) if commit else None,
                "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
                "skipped_lake_folders": list(lake_folders),
            }
        )
        _warn_skipped(skipped, lake_folders)
        return
    _warn_skipped(skipped, lake_folders)
    console = render.stdout()
    what = _files(moved.files) if recursive else target
    console.print(
        Text(f"wrote {what} ({render.human_size(moved.bytes)}) to {handle.name}", style="green")
    )
    if commit:
        console.print(render.commit_line("committed", commit))


def _warn_skipped(skipped: tuple[Skipped, ...], lake_folders: tuple[str, ...] = ()) -> None:
    """Tell standard error which local paths ``put -r`` left out, and why.

    Lake folders get one quiet line each: leaving them out is expected, as git leaves out .git.
    """
    err = render.stderr()
    for folder in lake_folders:
        err.print(Text(f"skipped the lake folder {folder}", style="dim"))
    if not skipped:
        return
    err.print(Text(f"warning: skipped {len(skipped)} path(s):", style="yellow"))
    for item in skipped:
        err.print(Text(f"  {item.path}: {item.reason}", style="yellow"))


def _put_target(source: str, local: Path, dest: str | None, recursive: bool) -> str:
    """The lake path (or prefix with -r) ``put`` writes to.

    Raises:
        typer.BadParameter: the source and -r do not fit together.
    """
    if source == STDIN:
        if recursive or not dest:
            raise typer.BadParameter("reading stdin needs a DEST path and no -r", param_hint="'-'")
        return dest
    if recursive:
        if not local.is_dir():
            raise typer.BadParameter(f"{source} is not a folder", param_hint="SOURCE")
        return dest or ""
    if local.is_dir():
        raise typer.BadParameter(f"{source} is a folder; use -r", param_hint="SOURCE")
    if not local.is_file():
        raise typer.BadParameter(f"{source} does not exist", param_hint="SOURCE")
    if not dest:
        return local.name
    return dest + local.name if dest.endswith("/") else dest


def get_command(
    path: Annotated[str, typer.Argument(help="Object path (with -r: a prefix, '' for all).")],
    dest: Annotated[
        Path | None,
        typer.Argument(help="Local file or folder (default: the object's name, here)."),
    ] = None,
    ref: RefOption = "main",
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Export every object under PATH.")
    ] = False,
    lake: LakeOption = DEFAULT_LAKE,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy an object, or with -r everything under a prefix, to the local disk."""
    if recursive and dest is None:
        raise typer.BadParameter("-r needs a DEST folder", param_hint="DEST")
    with open_lake(lake, namespace) as opened:
        if recursive:
            target = dest or Path(".")
            moved = transfer.get_dir(opened, path, ref, target)
        else:
            target = dest or Path(Path(path).name)
            if target.is_dir():
                target = target / Path(path).name
            moved = transfer.get_file(opened, path, ref, target)
    if as_json:
        render.emit_json(
            {"ref": ref, "path": str(target), "files": moved.files, "bytes": moved.bytes}
        )
        return
    render.stdout().print(
        Text(
            f"copied {_files(moved.files)} ({render.human_size(moved.bytes)}) "
            f"from {ref} to {target}",
            style="green",
        )
    )


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"
