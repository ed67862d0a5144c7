"""The embedded and lakeFS backends side by side, and flowlake's overhead over raw lakeFS calls.

    .venv/bin/python -m benchmarks.bench_backends            # everything (about 4 minutes)
    .venv/bin/python -m benchmarks.bench_backends --quick    # small sizes, prints only
    .venv/bin/python -m benchmarks.bench_backends --cases overhead --profile

The script starts its own lakeFS server (``tests/lakefs_server.py``: the cached release build,
local KV and blockstore in a temporary folder) and stops it at the end.

Cases:

* ``backends``: the same public-API operations on an embedded lake (temporary folder) and a
  lakeFS lake on the same machine: create a branch, commit N small objects (``upload_dir`` +
  ``commit``), put and get a large random file, diff two commits, merge. Medians and the
  lakeFS / embedded ratio (context, no target: one is a local library, the other a server).
* ``overhead``: each operation through flowlake's public API against the plain ``lakefs_sdk``
  call doing the same on the same server, interleaved (A B, then B A, ...), with the number of
  HTTP requests each side makes. Target: flowlake / raw < 1.2.

The table is printed and each case's section of ``benchmarks/RESULTS_backends.md`` is replaced.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shlex
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import store
from benchmarks.common import (
    CaseResult,
    Target,
    machine_info,
    median,
    render_markdown,
    render_text,
    timed,
    write_section,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS_backends.md"
NAMESPACE = "user:bench"
MIB = 1 << 20
CHUNK = 4 * MIB
OVERHEAD_TARGET = Target("<", 1.2)
PREAMBLE = """\
# Backend benchmark results

Written by `benchmarks/bench_backends.py`. Each section below is replaced when its case is run
again and records the command, the machine and the date. Ratios compare things measured side by
side in the same run against the same lakeFS server; absolute times are context only.
"""


# -- the lakeFS server -----------------------------------------------------------------------------


def _lakefs_server_module() -> Any:
    """``tests/lakefs_server.py``, which builds (or reuses) and starts a real lakeFS."""
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import lakefs_server

    return lakefs_server


@contextmanager
def lakefs_running(workdir: Path) -> Iterator[Any]:
    """A lakeFS server with its data under ``workdir``, stopped on exit."""
    server = _lakefs_server_module().start_lakefs(workdir / "lakefs")
    try:
        yield server
    finally:
        server.stop()


def raw_sdk(server: Any) -> Any:
    """A plain ``lakefs_sdk`` client (the generated API classes), logged in as the admin."""
    return _lakefs_server_module().client_for(server).sdk_client


def open_lakefs_lake(server: Any, repository: str, **options: Any) -> store.Lake:
    """``store.open`` on an existing repository, as a user would."""
    return store.open(
        f"lakefs://{repository}",
        namespace=NAMESPACE,
        endpoint=server.endpoint,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        **options,
    )


class RequestCounter:
    """Counts the HTTP requests one SDK client sends (every call goes through its pool)."""

    def __init__(self, api_client: Any) -> None:
        self._pool = api_client.rest_client.pool_manager
        self.count = 0

    def measure(self, fn: Callable[[], object]) -> int:
        original = self._pool.request

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        self.count = 0
        self._pool.request = counting
        try:
            fn()
        finally:
            del self._pool.request  # back to the class's method
        return self.count


# -- data ------------------------------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> Path:
    """``size`` random (incompressible) bytes at ``path``."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n
    return path


def restamp(path: Path) -> None:
    """New bytes at the start of a file, so no store can deduplicate the next put."""
    with open(path, "r+b") as f:
        f.write(os.urandom(64))


def small_folder(root: Path, n: int, size: int) -> Path:
    """``n`` files of ``size`` random bytes in folders of 100."""
    for i in range(n):
        folder = root / f"part-{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"obj-{i:05d}.bin").write_bytes(os.urandom(size))
    return root


def drain(stream: io.BufferedIOBase | Any) -> int:
    """Read a stream to its end in large chunks; the byte count."""
    total = 0
    with stream:
        while chunk := stream.read(CHUNK):
            total += len(chunk)
    return total


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- case: the same operations on both backends -----------------------------------------------


@dataclass
class Lakes:
    embedded: store.Lake
    lakefs: store.Lake


def _three_way(lake: store.Lake, base: str, changes: int) -> tuple[str, str]:
    """Two branches off ``base``: ``changes`` committed edits on each, on different paths."""
    src = lake.branch(unique("msrc"), source=base)
    dest = lake.branch(unique("mdst"), source=base)
    src.lake.backend.put_many(
        src.backend_name, [(f"merge/src/{i:04d}.bin", os.urandom(512)) for i in range(changes)]
    )
    src.commit("source side")
    dest.lake.backend.put_many(
        dest.backend_name, [(f"merge/dst/{i:04d}.bin", os.urandom(512)) for i in range(changes)]
    )
    dest.commit("destination side")
    return src.name, dest.name


def case_backends(args: argparse.Namespace, lakes: Lakes, data: Path) -> CaseResult:
    result = CaseResult("backends", "The same operations on the embedded and lakeFS backends")
    folder = small_folder(data / "small", args.small_n, args.small_size)
    big = write_random_file(data / "big.bin", args.large_mib * MIB)
    times: dict[tuple[str, str], list[float]] = {}

    def record(op: str, backend: str, seconds: float) -> None:
        times.setdefault((op, backend), []).append(seconds)

    order = [("embedded", lakes.embedded), ("lakefs", lakes.lakefs)]
    bases: dict[str, tuple[str, str]] = {}
    for rep in range(args.repeats):
        pair = order if rep % 2 == 0 else order[::-1]
        for name, lake in pair:
            # commit of N small objects, on a fresh branch
            br = lake.branch(unique("small"), source="main")
            t_up, _ = timed(lambda br=br: br.upload_dir(folder, prefix="small"))
            t_commit, c1 = timed(lambda br=br: br.commit(f"{args.small_n} small objects"))
            record("upload_dir N small", name, t_up)
            record("commit N small", name, t_commit)
            record("upload_dir + commit N small", name, t_up + t_commit)
            # a second commit changing a tenth of them, for the diff
            changed = [
                (f"small/part-{i // 100:03d}/obj-{i:05d}.bin", os.urandom(args.small_size))
                for i in range(0, args.small_n, 10)
            ]
            lake.backend.put_many(br.backend_name, changed)
            c2 = br.commit("a tenth changed")
            bases[name] = (c1.id, c2.id)
            # large file
            restamp(big)
            t_put, _ = timed(lambda br=br: br.write_file("big/file.bin", big))
            record(f"put {args.large_mib} MiB", name, t_put)
            t_get, n = timed(lambda br=br: drain(br.open("big/file.bin")))
            assert n == args.large_mib * MIB
            record(f"get {args.large_mib} MiB", name, t_get)
            lake.delete_branch(br.name)

    for rep in range(args.repeats * 3):
        pair = order if rep % 2 == 0 else order[::-1]
        for name, lake in pair:
            c1_id, c2_id = bases[name]
            t, changes = timed(lambda lake=lake, a=c1_id, b=c2_id: lake.diff(a, b))
            assert len(changes) == len(range(0, args.small_n, 10)), len(changes)
            record(f"diff of {len(changes)} changes", name, t)
            branch_name = unique("b")
            t, _ = timed(lambda lake=lake, b=branch_name: lake.branch(b, source="main"))
            record("create branch", name, t)
            lake.delete_branch(branch_name)

    for rep in range(args.repeats * 2):
        pair = order if rep % 2 == 0 else order[::-1]
        for name, lake in pair:
            src, dest = _three_way(lake, "main", 10)
            t, _ = timed(lambda lake=lake, s=src, d=dest: lake.merge(s, into=d))
            record("merge (10 + 10 changes)", name, t)
            lake.delete_branch(src)
            lake.delete_branch(dest)

    ops = sorted({op for op, _ in times}, key=_op_order)
    for op in ops:
        emb, lfs = median(times[(op, "embedded")]), median(times[(op, "lakefs")])
        n = len(times[(op, "lakefs")])
        result.add(f"{op}: embedded", emb * 1000, "ms", detail=f"median of {n}")
        result.add(f"{op}: lakeFS", lfs * 1000, "ms", detail=f"median of {n}")
        result.add(f"{op}: lakeFS / embedded", lfs / emb, "x")
    for name in ("embedded", "lakefs"):
        put = median(times[(f"put {args.large_mib} MiB", name)])
        get = median(times[(f"get {args.large_mib} MiB", name)])
        result.notes.append(
            f"{name}: put {args.large_mib / put:.0f} MiB/s, get {args.large_mib / get:.0f} MiB/s"
        )
    result.notes.append(
        f"N = {args.small_n} objects of {args.small_size} B in {args.small_n // 100 or 1} folders; "
        f"the diff is between that commit and one rewriting every tenth object; the merge is a "
        f"three-way merge of two branches of main with 10 new objects committed on each side; "
        f"the large file is {args.large_mib} MiB of random bytes, re-stamped before every put, "
        "read back through `open` in 4 MiB chunks. Both lakes are on the same disk; lakeFS runs "
        "on 127.0.0.1 with its local blockstore."
    )
    return result


def _op_order(op: str) -> int:
    keys = ["create branch", "upload_dir", "commit", "put", "get", "diff", "merge"]
    return next((i for i, k in enumerate(keys) if op.startswith(k)), len(keys))


# -- case: flowlake's overhead over the raw SDK -----------------------------------------------


@dataclass
class Pair:
    """One operation, both ways. ``setup`` runs untimed before each timed call and returns the
    argument the timed call gets; ``teardown`` runs untimed after it."""

    name: str
    raw: Callable[[Any], object]
    ours: Callable[[Any], object]
    raw_setup: Callable[[], Any]
    ours_setup: Callable[[], Any]
    teardown: Callable[[Any], None] | None = None
    repeats: int = 0
    note: str = ""
    #: The lake ``ours`` goes through (for counting its requests).
    lake: store.Lake | None = None


def overhead_pairs(
    args: argparse.Namespace, server: Any, data: Path
) -> tuple[list[Pair], list[store.Lake], Any]:
    import lakefs_sdk

    repo = _lakefs_server_module().new_repository(server)
    sdk = raw_sdk(server)
    lake = open_lakefs_lake(server, repo)
    unverified = open_lakefs_lake(server, repo, verify_reads=False)
    namespace = store.Namespace.parse(NAMESPACE)
    big = write_random_file(data / "overhead-big.bin", args.large_mib * MIB)
    small = os.urandom(args.small_size)

    def raw_branch(source: str = "main") -> str:
        name = unique("raw")
        sdk.branches_api.create_branch(repo, lakefs_sdk.BranchCreation(name=name, source=source))
        return name

    def ours_branch(source: str = "main") -> store.Branch:
        return lake.branch(unique("ours"), source=source)

    # Long-lived branches for writes and reads; each side writes on its own.
    raw_w, ours_w = raw_branch(), ours_branch()
    raw_up = lambda br, p, d: sdk.objects_api.upload_object(repo, br, p, content=d)  # noqa: E731
    raw_up(raw_w, "read/small.bin", small)
    ours_w.write_bytes("read/small.bin", small)
    raw_up(raw_w, "read/big.bin", big.read_bytes())
    ours_w.write_file("read/big.bin", big)
    unverified_w = unverified.get_branch(ours_w.name)

    def raw_commit_setup() -> str:
        raw_up(raw_w, unique("c/obj"), small)
        return raw_w

    def ours_commit_setup() -> store.Branch:
        ours_w.write_bytes(unique("c/obj"), small)
        return ours_w

    # Two commits with 100 changes between them, for the diff.
    diff_branch = raw_branch()
    for i in range(100):
        raw_up(diff_branch, f"d/{i:03d}.bin", small)
    c1 = sdk.commits_api.commit(repo, diff_branch, lakefs_sdk.CommitCreation(message="c1")).id
    for i in range(0, 200, 2):
        raw_up(diff_branch, f"d/{i:03d}.bin", os.urandom(args.small_size))
    c2 = sdk.commits_api.commit(repo, diff_branch, lakefs_sdk.CommitCreation(message="c2")).id

    def raw_diff(_: object) -> list[Any]:
        out, after = [], ""
        while True:
            page = sdk.refs_api.diff_refs(repo, c1, c2, after=after, amount=1000, type="two_dot")
            out.extend(page.results)
            if not page.pagination.has_more:
                return out
            after = page.pagination.next_offset

    def merge_setup(make: Callable[[str], str]) -> tuple[str, str]:
        src, dest = make("main"), make("main")
        for br, side in ((src, "s"), (dest, "d")):
            sdk.objects_api.upload_object(repo, br, f"m/{side}.bin", content=os.urandom(64))
            sdk.commits_api.commit(repo, br, lakefs_sdk.CommitCreation(message=side))
        return src, dest

    def ours_merge_setup() -> tuple[str, str]:
        made: list[str] = []

        def make(source: str) -> str:
            branch = lake.branch(unique("ours"), source=source)
            made.append(branch.name)
            return branch.backend_name

        merge_setup(make)
        return made[0], made[1]

    def drop_branches(names: Any) -> None:
        for name in names if isinstance(names, tuple) else (names,):
            if "/" in name:  # a flowlake name: to the lakeFS branch name
                name = store.names.parse_branch(name, namespace).backend_name()
            sdk.branches_api.delete_branch(repo, name)

    msg = lakefs_sdk.CommitCreation
    reps = args.overhead_repeats
    big_reps = max(3, args.repeats)
    pairs = [
        Pair(
            "create branch",
            raw=lambda name: sdk.branches_api.create_branch(
                repo, lakefs_sdk.BranchCreation(name=name, source="main")
            ),
            ours=lambda short: lake.branch(short, source="main"),
            raw_setup=lambda: unique("raw"),
            ours_setup=lambda: unique("ours"),
            teardown=None,
            repeats=reps,
            note="`lake.branch(name, source='main')` vs `branches_api.create_branch`",
        ),
        Pair(
            f"upload {args.small_size} B object",
            raw=lambda p: raw_up(raw_w, p, small),
            ours=lambda p: ours_w.write_bytes(p, small),
            raw_setup=lambda: unique("s/obj"),
            ours_setup=lambda: unique("s/obj"),
            repeats=reps,
            note="`branch.write_bytes` vs `objects_api.upload_object(content=bytes)`",
        ),
        Pair(
            f"upload {args.large_mib} MiB object",
            raw=lambda p: raw_up(raw_w, p, big.read_bytes()),
            ours=lambda p: ours_w.write_file(p, big),
            raw_setup=lambda: (restamp(big), unique("b/obj"))[1],
            ours_setup=lambda: (restamp(big), unique("b/obj"))[1],
            repeats=big_reps,
            note="`branch.write_file(path, local_file)` (streams) vs "
            "`objects_api.upload_object(content=file bytes)` (reads the file whole)",
        ),
        Pair(
            f"read {args.small_size} B object",
            raw=lambda _: sdk.objects_api.get_object(repo, raw_w, "read/small.bin"),
            ours=lambda _: ours_w.read_bytes("read/small.bin"),
            raw_setup=lambda: None,
            ours_setup=lambda: None,
            repeats=reps,
            note="`branch.read_bytes` vs `objects_api.get_object`",
        ),
        Pair(
            f"read {args.large_mib} MiB object",
            raw=lambda _: sdk.objects_api.get_object(repo, raw_w, "read/big.bin"),
            ours=lambda _: ours_w.read_bytes("read/big.bin"),
            raw_setup=lambda: None,
            ours_setup=lambda: None,
            repeats=big_reps,
            note="`branch.read_bytes` (MD5-verified stream) vs `objects_api.get_object`",
        ),
        Pair(
            f"read {args.large_mib} MiB object, verify_reads=False",
            raw=lambda _: sdk.objects_api.get_object(repo, raw_w, "read/big.bin"),
            ours=lambda _: unverified_w.read_bytes("read/big.bin"),
            raw_setup=lambda: None,
            ours_setup=lambda: None,
            repeats=big_reps,
            note="the same on a lake opened with `verify_reads=False` (no MD5 check)",
            lake=unverified,
        ),
        Pair(
            "commit (1 staged object)",
            raw=lambda br: sdk.commits_api.commit(repo, br, msg(message="m")),
            ours=lambda br: br.commit("m"),
            raw_setup=raw_commit_setup,
            ours_setup=ours_commit_setup,
            repeats=reps,
            note="`branch.commit` vs `commits_api.commit`",
        ),
        Pair(
            "diff of two commits (100 changes)",
            raw=raw_diff,
            ours=lambda _: lake.diff(c1, c2),
            raw_setup=lambda: None,
            ours_setup=lambda: None,
            repeats=reps,
            note="`lake.diff(commit_id, commit_id)` vs `refs_api.diff_refs` (paginated)",
        ),
        Pair(
            "merge (1 + 1 commits)",
            raw=lambda sd: sdk.refs_api.merge_into_branch(
                repo, sd[0], sd[1], merge=lakefs_sdk.Merge(message="merge")
            ),
            ours=lambda sd: lake.merge(sd[0], into=sd[1]),
            raw_setup=lambda: merge_setup(raw_branch),
            ours_setup=ours_merge_setup,
            teardown=drop_branches,
            repeats=max(5, reps // 2),
            note="`lake.merge(branch, into=branch)` vs `refs_api.merge_into_branch`",
        ),
    ]
    # create branch: delete what each call made, untimed, so the branch count stays constant.
    pairs[0].teardown = drop_branches
    for pair in pairs:
        pair.lake = pair.lake or lake
    return pairs, [lake, unverified], sdk


def case_overhead(args: argparse.Namespace, server: Any, data: Path) -> CaseResult:
    result = CaseResult("overhead", "flowlake over raw lakeFS SDK calls (same server)")
    pairs, lakes, sdk = overhead_pairs(args, server, data)
    raw_counter = RequestCounter(sdk.objects_api.api_client)
    for pair in pairs:
        ours_counter = RequestCounter(pair.lake.backend._api_client)  # type: ignore[union-attr]
        # Warm-up, untimed, also counting the requests each side sends.
        raw_arg, ours_arg = pair.raw_setup(), pair.ours_setup()
        raw_requests = raw_counter.measure(lambda p=pair, a=raw_arg: p.raw(a))
        ours_requests = ours_counter.measure(lambda p=pair, a=ours_arg: p.ours(a))
        for arg in (raw_arg, ours_arg):
            if pair.teardown:
                pair.teardown(_made_by(pair, arg))
        raw_t: list[float] = []
        ours_t: list[float] = []
        for rep in range(pair.repeats):
            sides = [("raw", pair.raw, pair.raw_setup), ("ours", pair.ours, pair.ours_setup)]
            for side, fn, setup in sides if rep % 2 == 0 else sides[::-1]:
                arg = setup()
                t, _ = timed(lambda fn=fn, arg=arg: fn(arg))
                (raw_t if side == "raw" else ours_t).append(t)
                if pair.teardown:
                    pair.teardown(_made_by(pair, arg))
        if args.profile:
            _profile(pair)
        raw_m, ours_m = median(raw_t), median(ours_t)
        result.add(
            pair.name,
            ours_m / raw_m,
            "x",
            OVERHEAD_TARGET,
            detail=f"{ours_m * 1000:.2f} ms vs {raw_m * 1000:.2f} ms; "
            f"{ours_requests} vs {raw_requests} requests; median of {pair.repeats}",
        )
        result.notes.append(f"{pair.name}: {pair.note}")
    result.notes.append(
        "detail: flowlake median vs raw median, and the HTTP requests each side sends for one "
        "call (counted on each client's connection pool). Raw calls use the generated "
        "`lakefs_sdk` API classes of a `lakefs.Client` (the high-level `lakefs` package wraps "
        "the same calls, adding a request for storage settings on object I/O)."
    )
    for lake in lakes:
        lake.close()
    return result


def _made_by(pair: Pair, arg: Any) -> Any:
    """What a timed call created that its teardown must remove."""
    if pair.name == "create branch":
        return arg if arg.startswith("raw-") else f"{NAMESPACE}/{arg}"
    return arg


def _profile(pair: Pair) -> None:
    arg = pair.ours_setup()
    profiler = cProfile.Profile()
    profiler.runcall(pair.ours, arg)
    if pair.teardown:
        pair.teardown(_made_by(pair, arg))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    print(f"---- profile of flowlake: {pair.name}\n{out.getvalue()}")


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_backends", description=__doc__
    )
    parser.add_argument("--cases", default="backends,overhead", help="comma-separated cases")
    parser.add_argument("--quick", action="store_true", help="small sizes; prints only")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the large operations")
    parser.add_argument("--overhead-repeats", type=int, default=21, help="repeats per small op")
    parser.add_argument("--small-n", type=int, default=1000, help="small objects per commit")
    parser.add_argument("--small-size", type=int, default=512, help="bytes per small object")
    parser.add_argument("--large-mib", type=int, default=256, help="size of the large file")
    parser.add_argument("--profile", action="store_true", help="cProfile flowlake's side")
    parser.add_argument("--results", type=Path, default=None, help="results file to update")
    parser.add_argument("--no-results", action="store_true", help="do not write results")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (kept)")
    args = parser.parse_args(argv)
    if args.quick:
        args.small_n, args.large_mib, args.repeats, args.overhead_repeats = 200, 16, 1, 5
    return args


def _command_line() -> str:
    return " ".join(
        [".venv/bin/python -m benchmarks.bench_backends", *map(shlex.quote, sys.argv[1:])]
    )


def _header(workdir: Path) -> str:
    info = machine_info(str(workdir))
    lines = [f"Command: `{_command_line()}`", ""]
    for key, value in info.items():
        if key == "free -h":
            lines.extend(["", "`free -h`:", "", "```", value, "```", ""])
        else:
            lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - {"backends", "overhead"}
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    results_path = args.results or (None if args.quick or args.no_results else RESULTS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="flowlake-bench-backends-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with lakefs_running(workdir) as server:
            for case in cases:
                data = workdir / f"data-{case}"
                data.mkdir(exist_ok=True)
                header = _header(workdir)
                if case == "backends":
                    repo = _lakefs_server_module().new_repository(server)
                    lakes = Lakes(
                        store.open(workdir / "embedded-lake", namespace=NAMESPACE),
                        open_lakefs_lake(server, repo),
                    )
                    try:
                        result = case_backends(args, lakes, data)
                    finally:
                        lakes.embedded.close()
                        lakes.lakefs.close()
                else:
                    result = case_overhead(args, server, data)
                print(render_text(result), flush=True)
                if results_path is not None:
                    body = f"## {result.title}\n\n{header}\n\n{render_markdown(result)}\n"
                    write_section(results_path, result.key, body, PREAMBLE)
                shutil.rmtree(data, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
