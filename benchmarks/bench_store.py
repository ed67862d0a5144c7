"""Benchmarks of the embedded store, each a ratio of things measured side by side in one run.

    .venv/bin/python -m benchmarks.bench_store                 # everything (about 10 minutes)
    .venv/bin/python -m benchmarks.bench_store --quick         # small sizes, a smoke test
    .venv/bin/python -m benchmarks.bench_store --cases diff --sizes 1000,1000000

Cases (see README.md beside this file for what each measures and why it is fair):

* ``branch``: creating a branch on commits of 1k, 100k and 1M entries (target: 1M/1k < 2).
* ``diff``: diff and merge of 10 changed entries on a 1M-entry tree against a full scan of both
  trees (target: at least 50x faster).
* ``io``: large-file put and get against raw write+fsync and raw read of the same bytes on the
  same disk (target: at least 0.7).
* ``import``: a folder of 10,000 files of 0.5 KB, ``upload_dir`` + ``commit`` against ``dvc add``
  and ``cp -r`` (target: at least 5x faster than dvc).

The table is printed and each case's section of ``benchmarks/RESULTS_store.md`` is replaced.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3

import store
from benchmarks.common import (
    CaseResult,
    Target,
    command_line,
    machine_info,
    median,
    percentile,
    render_markdown,
    render_text,
    stopwatch,
    timed,
    write_section,
)

NAMESPACE = "user:bench"
CHUNK = 4 << 20
MIB = 1 << 20
RESULTS = Path(__file__).resolve().parent / "RESULTS_store.md"
PREAMBLE = """\
# Store benchmark results

Written by `benchmarks/bench_store.py` (see `benchmarks/README.md`). Each section below is
replaced when its case is run again and records the command, the machine and the date. Ratios
compare things measured side by side in the same run; absolute times are context only.
"""


# -- the shared lake of large commits --------------------------------------------------------------


def _entry_path(i: int) -> str:
    """Paths of an image-like data set: 1,000 files a folder."""
    return f"data/{i // 1000:05d}/{i:07d}.bin"


def _open(lake_dir: Path) -> store.Lake:
    """A fresh handle: its tree cache is empty, as in a new process."""
    return store.open(lake_dir, namespace=NAMESPACE)


def ensure_commit(lake_dir: Path, n: int, batch: int) -> dict[str, float] | None:
    """Make branch ``src-<n>`` hold a commit of ``n`` entries (8 bytes each).

    Built through the backend contract (``put_many`` in batches, then ``commit``): one file per
    entry through ``upload_dir`` would measure the local filesystem, not the store. Returns the
    build timings, or None when a previous ``--keep`` run already built it.
    """
    name = f"src-{n}"
    with _open(lake_dir) as lake:
        if any(b.name == f"{NAMESPACE}/{name}" for b in lake.branches()):
            if lake.commit(name).metadata.get("entries") == str(n):
                return None
            lake.delete_branch(name)
        branch = lake.branch(name, source="main")
        backend = lake.backend
        with stopwatch() as staging:
            for start in range(0, n, batch):
                stop = min(n, start + batch)
                backend.put_many(
                    branch.backend_name,
                    [(_entry_path(i), i.to_bytes(8, "little")) for i in range(start, stop)],
                )
        with stopwatch() as committing:
            branch.commit(f"{n} entries", metadata={"entries": n})
    return {"stage": staging[0], "commit": committing[0]}


def _check_entries(lake_dir: Path, n: int) -> None:
    """Sanity check (untimed): the commit holds n entries, first and last where expected."""
    with _open(lake_dir) as lake:
        ref = f"src-{n}"
        assert lake.read_bytes(_entry_path(0), ref) == (0).to_bytes(8, "little")
        assert lake.read_bytes(_entry_path(n - 1), ref) == (n - 1).to_bytes(8, "little")


def _label(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# -- case: branch creation -------------------------------------------------------------------------


def case_branch(args: argparse.Namespace, lake_dir: Path) -> CaseResult:
    result = CaseResult("bench_store:branch", "Branch creation on commits of growing size")
    sizes = sorted(args.sizes)
    for n in sizes:
        built = ensure_commit(lake_dir, n, args.batch)
        _check_entries(lake_dir, n)
        if built is None:
            result.notes.append(f"the {_label(n)}-entry commit was reused from a previous run")
            continue
        total = built["stage"] + built["commit"]
        result.add(
            f"build a {_label(n)}-entry commit (put_many + commit)",
            total,
            "s",
            detail=f"stage {built['stage']:.1f} s + commit {built['commit']:.1f} s, "
            f"{n / total:,.0f} entries/s",
        )
    times: dict[int, list[float]] = {n: [] for n in sizes}
    rng = random.Random(0)
    with _open(lake_dir) as lake:
        for r in range(args.branch_repeat):
            order = list(sizes)
            rng.shuffle(order)  # interleaved and shuffled: drift on the machine hits all alike
            for n in order:
                name = f"bench-{n}-{r}"
                seconds, _ = timed(lambda n=n, name=name: lake.branch(name, source=f"src-{n}"))
                times[n].append(seconds)
                lake.delete_branch(name)
    smallest, largest = sizes[0], sizes[-1]
    for n in sizes:
        result.add(
            f"create a branch on the {_label(n)}-entry commit",
            median(times[n]) * 1000,
            "ms",
            detail=f"median of {len(times[n])}; p10 {percentile(times[n], 0.1) * 1000:.2f}, "
            f"p90 {percentile(times[n], 0.9) * 1000:.2f} ms",
        )
    if largest != smallest:
        result.add(
            f"ratio {_label(largest)} / {_label(smallest)}",
            median(times[largest]) / median(times[smallest]),
            "x",
            Target("<", 2),
            detail="medians",
        )
    result.notes.append(
        "`lake.branch(name, source=...)` through the public API; each new branch is deleted "
        "(untimed) so the number of branches stays constant; sizes interleaved in shuffled order."
    )
    return result


# -- case: diff and merge --------------------------------------------------------------------------

CHANGED = 10


def _change_positions(n: int, shift: int) -> list[int]:
    """``CHANGED`` positions spread evenly over the tree (worst case: each in its own range)."""
    return [((2 * k + 1) * n // (2 * CHANGED) + shift) % n for k in range(CHANGED)]


def _prepare_diff(lake_dir: Path, n: int) -> None:
    """Branches ``feature`` and ``dest-base``, each ``src-<n>`` plus 10 changed entries."""
    with _open(lake_dir) as lake:
        for name, shift, tag in (("feature", 0, b"feature"), ("dest-base", n // 40, b"dest")):
            if any(b.name == f"{NAMESPACE}/{name}" for b in lake.branches()):
                lake.delete_branch(name)
            branch = lake.branch(name, source=f"src-{n}")
            for k, i in enumerate(_change_positions(n, shift)):
                branch.write_bytes(_entry_path(i), tag + k.to_bytes(8, "little"))
            branch.commit(f"change {CHANGED} entries")


def _full_scan(lake: store.Lake, left: str, right: str) -> int:
    """The naive diff: list both trees completely and compare them; returns the change count."""
    old = {info.path: info.checksum for info in lake.backend.list_objects(left)}
    changed = 0
    for info in lake.backend.list_objects(right):
        if old.pop(info.path, None) != info.checksum:
            changed += 1
    return changed + len(old)


def case_diff(args: argparse.Namespace, lake_dir: Path) -> CaseResult:
    n = args.diff_size or max(args.sizes)
    result = CaseResult(
        "bench_store:diff",
        f"Diff and merge of {CHANGED} changed entries on a {_label(n)}-entry tree",
    )
    built = ensure_commit(lake_dir, n, args.batch)
    if built is not None:
        result.notes.append(
            f"built the {_label(n)}-entry commit first ({sum(built.values()):.1f} s)"
        )
    _prepare_diff(lake_dir, n)
    with _open(lake_dir) as lake:
        left, right = lake.resolve(f"src-{n}"), lake.resolve("feature")

    diffs, warm_diffs, merges, scans = [], [], [], []
    for r in range(max(args.diff_repeat, args.scan_repeat)):
        if r < args.diff_repeat:
            with _open(lake_dir) as lake:  # cold tree cache, as a new process would have
                seconds, changes = timed(lambda lake=lake: lake.diff(left, right))
                assert len(changes) == CHANGED, changes
                diffs.append(seconds)
                warm_diffs.append(timed(lambda lake=lake: lake.diff(left, right))[0])
            with _open(lake_dir) as lake:
                dest = f"merge-dest-{r}"
                lake.branch(dest, source="dest-base")
                seconds, _ = timed(lambda lake=lake, dest=dest: lake.merge("feature", into=dest))
                merges.append(seconds)
                assert len(lake.diff("dest-base", dest)) == CHANGED
                lake.delete_branch(dest)
        if r < args.scan_repeat:
            with _open(lake_dir) as lake:
                seconds, count = timed(lambda lake=lake: _full_scan(lake, left, right))
                assert count == CHANGED, count
                scans.append(seconds)

    scan = median(scans)
    result.add(
        "full scan: list both trees and compare", scan, "s", detail=f"median of {len(scans)}"
    )
    result.add(
        "diff (fresh handle, cold tree cache)",
        median(diffs) * 1000,
        "ms",
        detail=f"median of {len(diffs)}; warm cache {median(warm_diffs) * 1000:.1f} ms",
    )
    result.add(
        "merge incl. commit (three-way, fresh handle)",
        median(merges) * 1000,
        "ms",
        detail=f"median of {len(merges)}",
    )
    result.add("ratio full scan / diff", scan / median(diffs), "x", Target(">=", 50))
    result.add("ratio full scan / merge", scan / median(merges), "x", Target(">=", 50))
    result.notes.append(
        f"`feature` and the merge destination each change {CHANGED} entries of `src-{_label(n)}`, "
        "spread evenly over the tree (different ranges). Merges are real three-way merges into a "
        "fresh branch of the destination each time (branch creation untimed)."
    )
    result.notes.append(
        "The full scan lists two trees (`backend.list_objects`); a naive merge would also list "
        "the base and write a whole new tree, so the merge ratio is conservative."
    )
    return result


# -- case: large files -----------------------------------------------------------------------------


def _make_source(path: Path, mib: int, kind: str) -> None:
    """``mib`` MiB of random bytes, or of compressible CSV-like text (a few distinct blocks)."""
    rng = random.Random(1)
    blocks: list[bytes] = []
    if kind == "compressible":
        for b in range(8):
            lines, size = [], 0
            while size < CHUNK:
                line = (
                    f"{b},{rng.randrange(10**9)},{rng.random():.6f},"
                    f"label-{rng.randrange(50)},2024-0{rng.randrange(1, 10)}-1{rng.randrange(10)}\n"
                )
                lines.append(line)
                size += len(line)
            blocks.append("".join(lines).encode()[:CHUNK])
    with open(path, "wb") as f:
        for k in range(mib * MIB // CHUNK):
            f.write(os.urandom(CHUNK) if kind == "random" else blocks[k % len(blocks)])


def _stamp(path: Path, nonce: str) -> None:
    """Change the first bytes so that each repeat stores new content (no deduplication)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, nonce.encode().ljust(32, b"-"), 0)
    finally:
        os.close(fd)


def _drop_cache(*paths: str | Path) -> None:
    """Evict these files' pages from the page cache (they are clean: written and fsynced)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _drain(stream: io.BufferedIOBase | io.RawIOBase) -> int:
    total = 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
    return total


def _raw_write(src: Path, dst: Path) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        while chunk := f.read(CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _raw_read(path: Path) -> int:
    with open(path, "rb") as f:
        return _drain(f)


def _store_read(lake: store.Lake, path: str, ref: str) -> int:
    with lake.open(path, ref) as stream:
        return _drain(stream)


def _hash_file(path: Path) -> str:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)  # as the store's reads do
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    return hasher.hexdigest()


def _store_copy_out(lake: store.Lake, path: str, ref: str, dst: Path) -> None:
    with lake.open(path, ref) as stream, open(dst, "wb") as out:
        while chunk := stream.read(CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _blob_file(branch: store.Branch, path: str) -> tuple[str, int]:
    """Where the embedded backend keeps an object's blob, and its stored size (benchmark only:
    this reaches below the public API to evict the blob from the page cache)."""
    backend = branch.lake.backend
    entry = backend._entry(branch.backend_name, path)
    full = backend.objects.full_path(entry.address)
    return full, os.path.getsize(full)


IO_STEPS = (
    "raw write",
    "put",
    "raw read cold",
    "get cold",
    "raw read hot",
    "get hot",
    "raw copy",
    "copy out",
)


def _io_repeat(
    base: Path, src: Path, tag: str, store_first: bool, t: dict[str, list[float]]
) -> int:
    """One repeat of every large-file step, store and raw side by side; returns the stored size."""
    lake_dir, raw = base / f"lake-{tag}", base / f"raw-{tag}.bin"
    out_store, out_raw = base / "out-store.bin", base / "out-raw.bin"
    obj = f"models/{tag}.bin"
    _stamp(src, f"{tag}-{time.time_ns()}")
    _raw_read(src)  # the source is in the page cache for both writers
    with store.open(lake_dir, namespace=NAMESPACE) as lake:
        branch = lake.branch("io")
        ref = branch.name

        def pair(store_key: str, store_fn: Callable[[], object], raw_fn: Callable[[], object]):
            raw_key = store_key.replace("get", "raw read").replace("put", "raw write")
            raw_key = raw_key.replace("copy out", "raw copy")
            steps = [(store_key, store_fn), (raw_key, raw_fn)]
            for key, fn in steps if store_first else reversed(steps):
                t[key].append(timed(fn)[0])

        pair("put", lambda: branch.write_file(obj, src), lambda: _raw_write(src, raw))
        branch.commit("large file")
        blob, stored_size = _blob_file(branch, obj)
        _drop_cache(raw, blob)
        pair("get cold", lambda: _store_read(lake, obj, ref), lambda: _raw_read(raw))
        pair("get hot", lambda: _store_read(lake, obj, ref), lambda: _raw_read(raw))
        pair(
            "copy out",
            lambda: _store_copy_out(lake, obj, ref, out_store),
            lambda: _raw_write(raw, out_raw),
        )
        assert os.path.getsize(out_store) == os.path.getsize(src)
    for leftover in (raw, out_store, out_raw):
        leftover.unlink()
    shutil.rmtree(lake_dir)
    return stored_size


def case_io(args: argparse.Namespace, workdir: Path) -> CaseResult:
    mib = args.file_mib
    result = CaseResult("bench_store:io", f"Large-file put and get ({mib} MiB)")
    base = workdir / "io"
    base.mkdir(exist_ok=True)
    for kind in args.io_data:
        src = base / f"source-{kind}.bin"
        _make_source(src, mib, kind)
        t: dict[str, list[float]] = {k: [] for k in IO_STEPS}
        stored_size = 0
        for r in range(args.io_repeat):
            # alternate who goes first
            stored_size = _io_repeat(base, src, f"{kind}-{r}", r % 2 == 1, t)
        hashing = median([timed(lambda src=src: _hash_file(src))[0] for _ in range(2)])
        src.unlink()

        def rate(key: str, t=t) -> float:
            return mib / median(t[key])

        label = f"{kind} data"
        result.add(f"{label}: raw write+fsync", rate("raw write"), "MiB/s")
        result.add(
            f"{label}: put (`write_file`)",
            rate("put"),
            "MiB/s",
            detail=f"stored {stored_size / MIB:.0f} MiB"
            + (" (zstd)" if stored_size < mib * MIB else " (raw)"),
        )
        result.add(
            f"{label}: ratio put / raw write",
            median(t["raw write"]) / median(t["put"]),
            "x",
            Target(">=", 0.7),
        )
        result.add(f"{label}: raw read, cold", rate("raw read cold"), "MiB/s")
        result.add(f"{label}: get (`lake.open`), cold", rate("get cold"), "MiB/s")
        result.add(
            f"{label}: ratio get / raw read, cold",
            median(t["raw read cold"]) / median(t["get cold"]),
            "x",
            Target(">=", 0.7),
        )
        result.add(
            f"{label}: ratio get / raw read, page cache hot",
            median(t["raw read hot"]) / median(t["get hot"]),
            "x",
            detail=f"raw {rate('raw read hot'):.0f} MiB/s, get {rate('get hot'):.0f} MiB/s",
        )
        result.add(
            f"{label}: context: read hot + BLAKE3 (what verification costs)",
            mib / hashing,
            "MiB/s",
            detail="the source file, page cache hot, hashed as get hashes",
        )
        result.add(
            f"{label}: ratio copy out / raw copy (+fsync)",
            median(t["raw copy"]) / median(t["copy out"]),
            "x",
            detail=f"raw {rate('raw copy'):.0f} MiB/s, store {rate('copy out'):.0f} MiB/s",
        )
    result.notes.append(
        f"Medians of {args.io_repeat} repeats; the store and raw I/O alternate which goes first. "
        "Each repeat stamps new bytes at the start of the source so nothing is deduplicated; the "
        "source file is in the page cache for both writers. Cold reads evict exactly the two "
        "files read (`posix_fadvise(DONTNEED)` after fsync), nothing else on the machine."
    )
    result.notes.append(
        "put = `branch.write_file(path, local_path)` (hash, codec choice, temp file, fsync, "
        "rename, directory fsync); get = `lake.open(path, ref)` read in 4 MiB chunks and "
        "discarded (hash verified); copy out = the same into a file, fsynced."
    )
    return result


# -- case: importing a folder of small files -------------------------------------------------------

IMPORT_SCRIPT = """\
import sys, store
lake = store.open(sys.argv[1], namespace="user:bench")
branch = lake.branch("import")
branch.upload_dir(sys.argv[2], prefix="images")
branch.commit("import images")
"""


def _make_small_files(root: Path, count: int, size: int) -> None:
    for i in range(count):
        folder = root / f"class-{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img-{i:06d}.bin").write_bytes(os.urandom(size))


def find_dvc(flag: str | None) -> str | None:
    """The dvc executable: ``--dvc``, else ``$DVC``, else None (never installed by this script)."""
    candidate = flag or os.environ.get("DVC")
    if not candidate:
        return None
    found = shutil.which(candidate)
    return found


def _quiet(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)


def case_import(args: argparse.Namespace, workdir: Path) -> CaseResult:
    count, size = args.small_files, args.small_size
    result = CaseResult(
        "bench_store:import", f"Importing a folder of {count:,} files of {size} bytes"
    )
    base = workdir / "import"
    source = base / "source"
    _make_small_files(source, count, size)
    dvc = find_dvc(args.dvc)
    dvc_env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    t: dict[str, list[float]] = {"api": [], "process": [], "dvc": [], "cp": []}
    for r in range(args.import_repeat):
        run_dir = base / f"run-{r}"
        run_dir.mkdir()

        def api(run_dir=run_dir) -> None:
            with store.open(run_dir / "lake-api", namespace=NAMESPACE) as lake:
                branch = lake.branch("import")
                seconds, _ = timed(
                    lambda: (branch.upload_dir(source, prefix="images"), branch.commit("import"))
                )
                assert len(lake.list(branch.name, prefix="images/")) == count
                t["api"].append(seconds)

        def process(run_dir=run_dir) -> None:
            cmd = [sys.executable, "-c", IMPORT_SCRIPT, str(run_dir / "lake-proc"), str(source)]
            t["process"].append(timed(lambda: _quiet(cmd, run_dir))[0])

        def copy(run_dir=run_dir) -> None:
            cmd = ["cp", "-r", str(source), str(run_dir / "copy")]
            t["cp"].append(timed(lambda: _quiet(cmd, run_dir))[0])

        def dvc_add(run_dir=run_dir) -> None:
            repo = run_dir / "dvc-repo"
            repo.mkdir()
            _quiet(["git", "init", "-q"], repo)
            _quiet([dvc, "init", "-q"], repo, dvc_env)  # type: ignore[list-item]
            _quiet([dvc, "config", "core.site_cache_dir", str(run_dir / "dvc-site")], repo, dvc_env)  # type: ignore[list-item]
            shutil.copytree(source, repo / "images")
            cmd = [dvc, "add", "-q", "images"]
            t["dvc"].append(timed(lambda: _quiet(cmd, repo, dvc_env))[0])  # type: ignore[arg-type, list-item]

        steps: list[Callable[[], None]] = [api, process, copy] + ([dvc_add] if dvc else [])
        shift = r % len(steps)  # rotate who goes first
        for step in steps[shift:] + steps[:shift]:
            step()
        shutil.rmtree(run_dir)

    api_s, proc_s, cp_s = median(t["api"]), median(t["process"]), median(t["cp"])
    n = len(t["api"])
    result.add("flowlake `upload_dir` + `commit` (in process)", api_s, "s", detail=f"median of {n}")
    result.add(
        "flowlake in a fresh Python process (open, branch, upload_dir, commit)",
        proc_s,
        "s",
        detail="includes interpreter start and imports",
    )
    result.add("`cp -r`", cp_s, "s", detail=f"median of {n}")
    if dvc:
        dvc_s = median(t["dvc"])
        version = subprocess.run([dvc, "--version"], capture_output=True, text=True).stdout
        result.add("`dvc add`", dvc_s, "s", detail=f"dvc {version.strip()}, median of {n}")
        result.add("ratio dvc add / flowlake (in process)", dvc_s / api_s, "x", Target(">=", 5))
        result.add("ratio dvc add / flowlake (fresh process)", dvc_s / proc_s, "x")
    else:
        result.add("`dvc add`", None, "s", detail="dvc not available (--dvc PATH or DVC=PATH)")
        result.add("ratio dvc add / flowlake (in process)", None, "x", Target(">=", 5))
    result.add("ratio cp -r / flowlake (in process)", cp_s / api_s, "x")
    result.notes.append(
        "Each repeat imports into a new lake / new dvc repository (`git init` + `dvc init` "
        "untimed; only `dvc add` is timed) and rotates which tool goes first; the source folder "
        "is in the page cache for all. flowlake's commit is fsynced; `cp -r` and `dvc add` do "
        "not fsync. `dvc add` is a fresh process, so the fresh-process flowlake line is the "
        "like-for-like comparison of whole commands."
    )
    return result


# -- running ---------------------------------------------------------------------------------------

CASES = ("branch", "diff", "io", "import")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_store", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--quick", action="store_true", help="small sizes; results file not written")
    p.add_argument("--sizes", help="entries of the branch-creation commits (default 1k,100k,1M)")
    p.add_argument("--batch", type=int, default=50_000, help="put_many batch when building")
    p.add_argument("--branch-repeat", type=int, default=100, help="branch creations per size")
    p.add_argument("--diff-size", type=int, help="entries of the diff / merge tree (largest size)")
    p.add_argument("--diff-repeat", type=int, default=5, help="diffs and merges timed")
    p.add_argument("--scan-repeat", type=int, default=3, help="full scans timed")
    p.add_argument("--file-mib", type=int, help="large-file size in MiB (default 1024)")
    p.add_argument("--io-data", default="random,compressible", help="random, compressible")
    p.add_argument("--io-repeat", type=int, default=2, help="repeats of each large-file step")
    p.add_argument("--small-files", type=int, help="files in the imported folder (default 10000)")
    p.add_argument("--small-size", type=int, default=512, help="bytes of each small file")
    p.add_argument("--import-repeat", type=int, default=3, help="imports timed per tool")
    p.add_argument("--dvc", help="dvc executable (default: $DVC); never installed by this script")
    p.add_argument("--workdir", help="scratch folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (reuse commits)")
    p.add_argument("--results", help=f"markdown file to update (default {RESULTS.name})")
    p.add_argument("--no-results", action="store_true", help="print only")
    p.add_argument("--profile", action="store_true", help="print a cProfile summary per case")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.io_data = [d.strip() for d in args.io_data.split(",") if d.strip()]
    if set(args.io_data) - {"random", "compressible"}:
        p.error("--io-data takes random and/or compressible")
    quick = args.quick
    default_sizes = "1000,10000,100000" if quick else "1000,100000,1000000"
    args.sizes = [int(s.replace("_", "")) for s in (args.sizes or default_sizes).split(",")]
    args.file_mib = args.file_mib or (64 if quick else 1024)
    args.small_files = args.small_files or (1000 if quick else 10_000)
    if quick:
        args.branch_repeat = min(args.branch_repeat, 20)
    if args.no_results or (quick and not args.results):
        args.results = None
    else:
        args.results = Path(args.results) if args.results else RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="flowlake-bench-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    lake_dir = workdir / "lake"
    machine = machine_info(str(workdir))
    command = command_line("benchmarks.bench_store", env=() if args.dvc else ("DVC",))
    print(f"workdir {workdir}; {machine['nproc']} CPUs; load {machine['load average']}")
    runners: dict[str, Callable[[], CaseResult]] = {
        "branch": lambda: case_branch(args, lake_dir),
        "diff": lambda: case_diff(args, lake_dir),
        "io": lambda: case_io(args, workdir),
        "import": lambda: case_import(args, workdir),
    }
    try:
        for case in args.cases:
            profiler = cProfile.Profile() if args.profile else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            result = runners[case]()
            if profiler:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
            elapsed = time.perf_counter() - started
            print(render_text(result))
            print(f"   ({case}: {elapsed:.0f} s)\n", flush=True)
            if args.results:
                write_section(
                    args.results, result.key, _section(result, machine, command, elapsed), PREAMBLE
                )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.results:
        print(f"results written to {args.results}")
    return 0


def _section(result: CaseResult, machine: dict[str, str], command: str, elapsed: float) -> str:
    return "\n".join(
        [
            f"## {result.title}",
            "",
            f"- command: `{command}` (this case took {elapsed:.0f} s)",
            f"- date: {machine['date']}; code: {machine['code']}",
            f"- machine: nproc {machine['nproc']}, {machine['cpu']}; {machine['python']}",
            f"- load average when the run started: {machine['load average']}; "
            f"disk: {machine['disk']}",
            "- `free -h`:",
            "",
            "```text",
            machine["free -h"],
            "```",
            "",
            render_markdown(result),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
