"""Compute benchmarks: launch overhead, throughput of tiny jobs, environment cache.

Run: ``.venv/bin/python -m benchmarks.bench_compute [--jobs 100] [--only local|ray]``
(``--only local``: the local backend's launch and tiny jobs alone, no Ray, no environments).

Every target is a ratio of things measured side by side in this one run:

* launch overhead, submit to the first line of user code: local job vs a bare ``subprocess``
  start of the same interpreter (aim <= 1.5x plus one commit), and Ray job vs a bare Ray task
  (aim <= 1.5x; after 3 warm-up launches of each, `--launches` pairs interleaved);
* N tiny jobs through each backend: throughput, and the share of each job's wall time spent on
  versioning (opening the lake, creating the run branch and committing its start; storing the log,
  committing and merging its end), from the runner's own phase timings;
* environment cache hit vs cold build (``uv``; uv's own download cache is warm for both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import compute
import store
from compute import envs
from tracking.snapshot import RACY_WINDOW_NS

FIRST_LINE_FILE = "first_line.txt"


def first_line(out: str) -> None:
    """A job body that records when the user's code started, and nothing else."""
    stamp = time.time()
    with open(out, "w") as f:
        f.write(repr(stamp))


def tiny() -> int:
    return 1


def _lake(root: Path) -> store.Lake:
    lake = store.open(root / "lake")
    branch = lake.branch("ingest")
    branch.write_bytes("data/x.txt", b"x")
    branch.commit("data")
    lake.merge(branch.name, into="main")
    return lake


def bare_subprocess(tmp: Path) -> float:
    out = tmp / "bare.txt"
    start = time.time()
    subprocess.run(
        [sys.executable, "-c", f"import time; open({str(out)!r}, 'w').write(repr(time.time()))"],
        check=True,
    )
    return float(out.read_text()) - start


def one_commit(lake: store.Lake, i: int) -> float:
    branch = lake.branch(f"c{i}", exist_ok=True)
    branch.write_bytes("x", str(i).encode())
    start = time.perf_counter()
    branch.commit("one")
    return time.perf_counter() - start


def _project(tmp: Path) -> Path:
    """The project the jobs are submitted from: a git work tree with one committed source
    file, beside (not around) the lake, as a project usually is; its code does not change
    from one submit to the next, and it was last changed a few seconds before the first."""
    project = tmp / "project"
    project.mkdir()
    (project / "train.py").write_text("def train() -> int:\n    return 1\n")
    # Written an hour ago, as a project's files usually were: git's index then holds no
    # racily clean entry, which git would check and rewrite the index for at every command.
    old = time.time() - 3600
    os.utime(project / "train.py", (old, old))
    for argv in (
        ["init", "-q"],
        ["add", "train.py"],
        ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "c"],
    ):
        subprocess.run(["git", *argv], cwd=project, check=True, capture_output=True)
    # Files changed within the racy window are never cached as unchanged (tracking.snapshot):
    # a project is older than that when one submits from it.
    time.sleep(RACY_WINDOW_NS / 1e9 + 0.5)
    return project


#: Launches of each kind before the measured ones (a Ray worker's first task imports).
WARMUP_LAUNCHES = 3


def job_launch(lake: store.Lake, project: Path, out_dir: Path, backend: str) -> float:
    out = out_dir / f"job-{backend}.txt"
    start = time.time()
    job = compute.submit(
        first_line, {"out": str(out)}, lake=lake, backend=backend, code_dir=project
    )
    job.wait(timeout=300)
    return float(out.read_text()) - start


def ray_job_launch(lake: store.Lake, project: Path, out_dir: Path) -> tuple[float, float]:
    """A Ray job's launch (as :func:`job_launch`), and the part of it after ``submit`` returned
    (the Ray backend's own share: the task's start and the job's way to its first line).

    The job writes its stamp to ``out_dir``, outside the snapshotted ``project``: a project's
    code does not change from one launch to the next, so its checkout is made once and reused.
    """
    out = out_dir / "job-ray.txt"
    start = time.time()
    job = compute.submit(first_line, {"out": str(out)}, lake=lake, backend="ray", code_dir=project)
    submitted = time.time()
    job.wait(timeout=300)
    first = float(out.read_text())
    return first - start, first - submitted


def _now() -> float:
    return time.time()


def bare_ray_task(stamp: Any) -> float:
    """A bare Ray task's launch: ``.remote()`` to its first line (``stamp``: ``_now`` as a Ray
    remote function, registered once, as a user's task is)."""
    import ray

    start = time.time()
    return float(ray.get(stamp.remote())) - start


def many(lake: store.Lake, project: Path, backend: str, n: int) -> dict[str, float]:
    start = time.perf_counter()
    jobs = [compute.submit(tiny, lake=lake, backend=backend, code_dir=project) for _ in range(n)]
    for job in jobs:
        job.wait(timeout=1200)
    wall = time.perf_counter() - start
    versioning = 0.0
    per_job = 0.0
    for job in jobs:
        record = job.record()
        outcome = json.loads((job._folder.attempt_dir(record.attempt) / "outcome.json").read_text())
        versioning += outcome["timings"]["setup"] + outcome["timings"]["finish"]
        per_job += (record.ended_at or 0) - (record.started_at or 0)
    return {"jobs_per_s": n / wall, "wall_s": wall, "versioning_share": versioning / per_job}


def env_cache(tmp: Path) -> dict[str, float]:
    spec = compute.Environment(pypi={"humanize": "4.9.0"})
    os.environ["FLOWLAKE_ENV_CACHE"] = str(tmp / "envs")
    start = time.perf_counter()
    envs.ensure(spec)
    cold = time.perf_counter() - start
    hits = []
    for _ in range(3):
        start = time.perf_counter()
        envs.ensure(spec)
        hits.append(time.perf_counter() - start)
    return {"cold_s": cold, "hit_s": median(hits), "ratio": cold / median(hits)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("local", "ray"), default=None)
    parser.add_argument(
        "--launches", type=int, default=20, help="Ray launches measured (after warm-up)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowlake-bench-compute-"))
    os.environ["FLOWLAKE_LEASE_DIR"] = str(tmp / "leases")
    os.environ["FLOWLAKE_CPUS"] = str(os.cpu_count() or 1)
    results: dict[str, Any] = {}
    try:
        lake = _lake(tmp)
        project = _project(tmp)
        if args.only != "ray":
            # Interleaved, so that a load that comes and goes weighs on both sides alike.
            launches, bares, commits = [], [], []
            for i in range(args.repeat):
                bares.append(bare_subprocess(tmp))
                commits.append(one_commit(lake, i))
                launches.append(job_launch(lake, project, tmp, "local"))
            local, bare, commit = median(launches), median(bares), median(commits)
            results["launch_local"] = {
                "job_s": local,
                # The run's first job also starts the local fork server (unless one runs).
                "first_job_s": launches[0],
                "bare_subprocess_s": bare,
                "one_commit_s": commit,
                "ratio_vs_bare": local / bare,
                "ratio_vs_bare_plus_commit": local / (bare + commit),
            }
            results["many_local"] = many(lake, project, "local", args.jobs)
        if args.only == "local":
            return
        import ray

        # A Ray temp folder of its own: launches of tasks with a runtime_env (as jobs are) were
        # seen to slow down by milliseconds as old sessions pile up in the shared /tmp/ray.
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=str(tmp / "ray"),
        )
        stamp = ray.remote(num_cpus=1)(_now)
        out_dir = Path(tempfile.mkdtemp(prefix="flowlake-bench-compute-out-"))
        try:
            for _ in range(WARMUP_LAUNCHES):  # workers started, imports done, on both sides
                bare_ray_task(stamp)
                ray_job_launch(lake, project, out_dir)
            # Pairs, interleaved, so that a load that comes and goes weighs on both sides alike.
            bares, launches = [], []
            for _ in range(args.launches):
                bares.append(bare_ray_task(stamp))
                launches.append(ray_job_launch(lake, project, out_dir))
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        bare_ray = median(bares)
        ray_job = median(total for total, _ in launches)
        after_submit = median(part for _, part in launches)
        results["launch_ray"] = {
            "launches": args.launches,
            "job_s": ray_job,
            "bare_task_s": bare_ray,
            "ratio": ray_job / bare_ray,
            "ratio_of_pairs_median": median(
                j / b for (j, _), b in zip(launches, bares, strict=True)
            ),
            "after_submit_s": after_submit,
            "ratio_after_submit": after_submit / bare_ray,
        }
        results["many_ray"] = many(lake, project, "ray", args.jobs)
        ray.shutdown()
        results["env_cache"] = env_cache(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
