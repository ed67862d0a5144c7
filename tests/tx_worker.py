"""A process that opens a transaction and stays inside it until it is killed.

Run by the scratch-branch tests as ``python tx_worker.py LOCATION BRANCH``: it starts a
transaction on BRANCH, writes one object, prints the scratch branch's name and sleeps, so the
test can kill it mid-transaction (SIGKILL: nothing is cleaned up).
"""

from __future__ import annotations

import sys
import time

import store


def run(location: str, branch: str) -> None:
    lake = store.open(location, namespace="user:tester")
    with lake.get_branch(branch).transact("never committed") as tx:
        tx.write_bytes("half-done.txt", b"written by a transaction that never ends")
        print(tx.name, flush=True)
        time.sleep(600)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
