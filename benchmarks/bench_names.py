"""Parsers of names, refs and paths take bounded time on hostile input (issue 9).

Each parser gets its worst input of the longest accepted length, and a 100 KB input it must
refuse; both are timed against the same parser on a short, ordinary input in the same run. The
old ref regex, which backtracked quadratically, is timed on a 20 KB ref for comparison.

Run: ``.venv/bin/python -m benchmarks.bench_names``
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

from store.errors import StoreError
from store.names import (
    MAX_PATH,
    Namespace,
    parse_branch,
    parse_branch_ref,
    user_facing,
    validate_path,
    validate_tag,
)
from store.refs import MAX_REF, RefSpec

_OLD_ANCESTRY = re.compile(r"^(?P<base>.+?)(?P<steps>(~\d*)+)$")
HUGE = 100_000
NS = Namespace("user", "tester")


def per_call(fn: Callable[[str], object], text: str, budget: float = 0.2) -> float:
    """Seconds per call of ``fn(text)`` (errors count as answers), over about ``budget`` s."""
    calls, start = 0, time.perf_counter()
    while True:
        with contextlib.suppress(StoreError):
            fn(text)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / calls


CASES: list[tuple[str, Callable[[str], object], str, str, str]] = [
    # name, parser, short input, worst accepted-length input, hostile input
    ("ref ~N", RefSpec.parse, "main~2", "m" + "~1" * ((MAX_REF - 1) // 2), "main" + "~1" * HUGE),
    (
        "branch name",
        lambda t: parse_branch(t, NS),
        "exp",
        "user:" + "a" * 64 + "/" + "b" * 200,
        "a" * HUGE,
    ),
    ("branch ref", lambda t: parse_branch_ref(t, NS), "dev__old", "_" * 1024, "_" * HUGE),
    ("tag", validate_tag, "v1.0", "v" + "1." * 99 + "9", "v" * HUGE),
    ("namespace", Namespace.parse, "user:avery", "user:" + "é" * 64, "user:" + "a" * HUGE),
    ("path", validate_path, "data/train.parquet", "a/" * (MAX_PATH // 2 - 1) + "b", "a/" * HUGE),
    ("error names", user_facing, "branch 'u-a__b'", "'u-" + "_" * 1020 + "'", "'u-" + "_" * HUGE),
]


def main() -> None:
    print("| parser | short input | longest accepted, worst case | 100 KB hostile | ratios |")
    print("|---|---|---|---|---|")
    for name, fn, short, worst, hostile in CASES:
        base = per_call(fn, short)
        at_max = per_call(fn, worst)
        huge = per_call(fn, hostile)
        print(
            f"| {name} | {base * 1e6:.1f} µs | {at_max * 1e6:.1f} µs | {huge * 1e6:.1f} µs | "
            f"{at_max / base:.0f}x, {huge / base:.0f}x |"
        )
    old_ref = "main" + "~1" * 10_000 + "x"
    start = time.perf_counter()
    _OLD_ANCESTRY.match(old_ref)
    old = time.perf_counter() - start
    new = per_call(RefSpec.parse, old_ref)
    print(f"\nold ref regex on a 20 KB ref: {old:.2f} s; now {new * 1e6:.1f} µs ({old / new:.0f}x)")


if __name__ == "__main__":
    main()
