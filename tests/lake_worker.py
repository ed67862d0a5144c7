"""A process that works on a lake and records every acknowledged operation.

Run by the crash and concurrency tests as ``python lake_worker.py LAKE ACKS WORKER MODE N``.
An operation is appended to ACKS (and fsynced) only after the store has returned from it, so
each line is a promise the lake must keep even if this process is killed a moment later.

MODE ``mixed`` cycles through writes (inline and blob), commits (every third one writing its
object itself), merges into main and tags on a branch of its own; MODE ``shared`` commits to
the shared branch ``user:worker/shared``; MODE ``counter`` adds one to ``counter.txt`` on the
existing branch ``user:worker/counter`` N times, each a read-modify-write in a serializable
transaction (``Branch.run_transaction``).
"""

from __future__ import annotations

import json
import os
import sys

import store
from store import errors


def content(worker: str, step: int, size: int) -> bytes:
    seed = f"{worker}:{step}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


def acknowledge(acks, **record) -> None:
    acks.write(json.dumps(record) + "\n")
    acks.flush()
    os.fsync(acks.fileno())


def count(lake: store.Lake, acks_path: str, worker: str, steps: int) -> None:
    """MODE ``counter``: each acknowledged line holds the value that increment committed."""
    branch = lake.get_branch("user:worker/counter")

    def increment(tx: store.Branch) -> int:
        value = int(tx.read_bytes("counter.txt")) + 1
        tx.write_bytes("counter.txt", str(value).encode())
        return value

    with open(acks_path, "a") as acks:
        for step in range(steps):
            value = branch.run_transaction(increment, f"{worker} +1", retries=1000)
            acknowledge(acks, op="increment", worker=worker, step=step, value=value)


def run(lake_path: str, acks_path: str, worker: str, mode: str, steps: int) -> None:
    lake = store.open(lake_path, namespace="user:worker")
    if mode == "counter":
        count(lake, acks_path, worker, steps)
        return
    own = f"user:worker/{worker}" if mode == "mixed" else "user:worker/shared"
    branch = lake.branch(own.split("/")[1], exist_ok=True)
    with open(acks_path, "a") as acks:
        for step in range(steps):
            path = f"{worker}/{step}.bin"
            size = 200 if step % 2 else 300_000
            data = content(worker, step, size)
            if mode == "mixed" and step % 3 == 1:
                # The write and its commit in one step (Branch.commit(writes=)).
                commit = branch.commit(
                    f"{worker} step {step}", metadata={"step": step}, writes={path: data}
                )
                acknowledge(acks, op="write", branch=own, path=path, size=size, step=step)
                acknowledge(acks, op="commit", branch=own, commit=commit.id)
            else:
                branch.write_bytes(path, data)
                acknowledge(acks, op="write", branch=own, path=path, size=size, step=step)
                try:
                    commit = branch.commit(f"{worker} step {step}", metadata={"step": step})
                    acknowledge(acks, op="commit", branch=own, commit=commit.id)
                except errors.NothingToCommitError:
                    pass  # another process sharing the branch committed our write already
            if mode == "mixed" and step % 3 == 2:
                merged = lake.merge(own, into="main", strategy="source-wins")
                acknowledge(acks, op="merge", branch="main", commit=merged.id)
            if mode == "mixed" and step % 4 == 3:
                tag = f"{worker}-{step}"
                lake.tag(tag, own)
                acknowledge(acks, op="tag", tag=tag, commit=lake.tags()[tag])


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
