"""Reading ``_flowlake/policy.toml``: TOML (``tomllib``) to a frozen :class:`Policy`, or an error
naming the line.

The file format, version 1::

    version = 1

    [groups]                           # 'group:<name>' anywhere must name one of these
    release = ["user:avery", "token:ci"]  # members are users and tokens (groups do not nest)

    [perimeters.production]            # every policy defines staging and production
    principals = ["group:release"]     # who may open the lake in this perimeter
    write = ["production/**"]          # branches (<namespace>/<branch>) they may write
    max_gpus = 8                       # per job; also max_cpus, max_memory_gib
    package_indexes = ["https://pypi.org/simple"]
    image_registries = ["ghcr.io/acme"]

    [perimeters.staging]
    principals = ["*"]
    write = ["user:{user}/**"]         # {user}: the acting person's login (own namespace)
    read_deny = ["data/pii/**"]        # paths not readable from this perimeter

    [[gates]]                          # a promotion into main passes only if every gate holds
    check_run = "tests"

    [[gates]]
    metric = "accuracy >= production.accuracy - 0.002"
    require = "not worse"

    [[gates]]
    approvals = 1
    approvers = ["group:release"]      # not empty; the commit's author never counts
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Callable
from typing import Any

from store.errors import PolicyError
from store.policy.model import USER_PLACEHOLDER, Gate, GateKind, Perimeter, Policy

VERSION = 1
REQUIRED_PERIMETERS = ("staging", "production")
MAX_POLICY_BYTES = 1 << 20
PRINCIPAL = re.compile(r"\*|(user|group|token):[A-Za-z0-9._@+-]{1,64}")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_METRIC = r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}"
CONDITION = re.compile(
    rf"\s*(?P<metric>{_METRIC})\s*(?P<op>>=|<=|==|>|<)\s*"
    rf"(?:production\.(?P<baseline>{_METRIC})\s*(?:(?P<sign>[+-])\s*(?P<delta>{_NUMBER}))?"
    rf"|(?P<constant>{_NUMBER}))\s*"
)
REQUIRE = ("better", "not worse")
INDEX_URL = re.compile(r"(https?://[^\s/@]+|file://)[^\s@]*")
REGISTRY = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9._-]+)*/?")
PERIMETER_KEYS = {
    "principals",
    "write",
    "read_deny",
    "max_gpus",
    "max_cpus",
    "max_memory_gib",
    "package_indexes",
    "image_registries",
}
GATE_KEYS = {"check_run", "metric", "require", "approvals", "approvers"}


def parse_policy(text: str | bytes, *, strict: bool = True) -> Policy:
    """Parse and validate a policy file.

    Args:
        text: the file's content (UTF-8 when bytes), at most 1 MiB.
        strict: also refuse mistakes that parse but can only fail closed: a ``group:`` entry
            naming no group under ``[groups]`` (or a group inside a group), an empty
            ``approvers`` list, and a metric gate with ``production.<m>`` on its left. A change
            of ``main``'s policy is always read strictly; the policy already on ``main`` is read
            with ``strict=False``, so a lake whose policy predates these checks still opens
            (those entries then match nobody, as before) and can be fixed.

    Returns:
        The policy; it has at least the ``staging`` and ``production`` perimeters.

    Raises:
        PolicyError: the file is not valid TOML or breaks a rule of the format; the message and
            ``.line`` name the line (0 when no single line is to blame).
    """
    if isinstance(text, bytes):
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyError("the policy file is larger than 1 MiB", 0)
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise PolicyError(f"the policy file is not UTF-8: {exc}", 0) from None
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError("the policy file is larger than 1 MiB", 0)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise PolicyError(f"not valid TOML: {exc}", int(found.group(1)) if found else 0) from None
    return _Reader(data, _Lines(text), strict).policy()


class _Lines:
    """Where tables and keys stand in the file, so errors can name a line."""

    def __init__(self, text: str) -> None:
        self.tables: dict[str, list[int]] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        table, index = "", 0
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            header = re.fullmatch(r"(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?", line)
            if header:
                table = header.group(2).replace('"', "").replace(" ", "")
                self.tables.setdefault(table, []).append(number)
                index = len(self.tables[table]) - 1
                continue
            key = re.match(r"([A-Za-z0-9_\"'-]+)\s*=", line)
            if key:
                self.keys.setdefault((table, index, key.group(1).strip("\"'")), number)

    def of(self, table: str, index: int = 0, key: str | None = None) -> int:
        if key is not None and (table, index, key) in self.keys:
            return self.keys[(table, index, key)]
        found = self.tables.get(table, [])
        return found[index] if index < len(found) else 0


class _Reader:
    def __init__(self, data: dict[str, Any], lines: _Lines, strict: bool = True) -> None:
        self.data = data
        self.lines = lines
        self.strict = strict
        # The groups defined, once read: a ``group:`` entry must name one of them (None while
        # the groups themselves are read, where a ``group:`` member is refused: none nest).
        self.group_names: frozenset[str] | None = None

    def fail(self, message: str, line: int) -> PolicyError:
        return PolicyError(message, line)

    def policy(self) -> Policy:
        unknown = set(self.data) - {"version", "groups", "perimeters", "gates"}
        if unknown:
            key = sorted(unknown)[0]
            raise self.fail(f"unknown top-level key {key!r}", self.lines.of("", 0, key))
        if self.data.get("version") != VERSION:
            raise self.fail(
                f"'version = {VERSION}' is required (found {self.data.get('version')!r})",
                self.lines.of("", 0, "version"),
            )
        groups = self._groups()
        self.group_names = frozenset(groups)
        perimeters = self._perimeters()
        gates = tuple(self._gate(i, g) for i, g in enumerate(self._list_of_tables("gates")))
        return Policy(perimeters, gates, groups)

    def _groups(self) -> dict[str, tuple[str, ...]]:
        table = self.data.get("groups", {})
        if not isinstance(table, dict):
            raise self.fail("'groups' must be a table", self.lines.of("", 0, "groups"))
        groups: dict[str, tuple[str, ...]] = {}
        for name, members in table.items():
            line = self.lines.of("groups", 0, name)
            self._check_name(name, "group", line)
            groups[name] = self._principals(members, f"group {name!r}", line)
        return groups

    def _perimeters(self) -> dict[str, Perimeter]:
        table = self.data.get("perimeters")
        if not isinstance(table, dict):
            raise self.fail("a [perimeters.<name>] table is required", 0)
        missing = [p for p in REQUIRED_PERIMETERS if p not in table]
        if missing:
            raise self.fail(f"perimeter {missing[0]!r} must be defined", 0)
        return {name: self._perimeter(name, body) for name, body in table.items()}

    def _perimeter(self, name: str, body: Any) -> Perimeter:
        where = f"perimeters.{name}"
        line = self.lines.of(where)
        self._check_name(name, "perimeter", line)
        if not isinstance(body, dict):
            raise self.fail(f"perimeter {name!r} must be a table", line)
        self._no_unknown_keys(body, PERIMETER_KEYS, f"perimeter {name!r}", where, 0)
        if "principals" not in body:
            raise self.fail(f"perimeter {name!r} needs 'principals'", line)

        def strings(key: str) -> tuple[str, ...]:
            return self._strings(body.get(key, []), f"{where}.{key}", self.lines.of(where, 0, key))

        def patterns(key: str, placeholders: bool) -> tuple[str, ...]:
            found = strings(key)
            for pattern in found:
                rest = pattern.replace(USER_PLACEHOLDER, "") if placeholders else pattern
                if "{" in rest or "}" in rest:
                    allowed = f"only {USER_PLACEHOLDER} may" if placeholders else "none may"
                    raise self.fail(
                        f"{where}.{key}: {pattern!r} holds a placeholder; {allowed} appear here",
                        self.lines.of(where, 0, key),
                    )
            return found

        max_gpus = body.get("max_gpus")
        if max_gpus is not None and (
            not isinstance(max_gpus, int) or isinstance(max_gpus, bool) or max_gpus < 0
        ):
            raise self.fail(
                f"{where}.max_gpus must be a whole number >= 0, not {max_gpus!r}",
                self.lines.of(where, 0, "max_gpus"),
            )

        def amount(key: str) -> float | None:
            value = body.get(key)
            if value is not None and (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise self.fail(
                    f"{where}.{key} must be a number >= 0, not {value!r}",
                    self.lines.of(where, 0, key),
                )
            return None if value is None else float(value)

        def matching(key: str, shape: re.Pattern[str], example: str) -> tuple[str, ...]:
            found = strings(key)
            for entry in found:
                if not shape.fullmatch(entry):
                    raise self.fail(
                        f"{where}.{key}: {entry!r} is not {example}", self.lines.of(where, 0, key)
                    )
            return tuple(e.rstrip("/") for e in found)

        return Perimeter(
            name=name,
            principals=self._principals(
                body["principals"], f"{where}.principals", self.lines.of(where, 0, "principals")
            ),
            write=patterns("write", placeholders=True),
            read_deny=patterns("read_deny", placeholders=False),
            max_gpus=max_gpus,
            max_cpus=amount("max_cpus"),
            max_memory_gib=amount("max_memory_gib"),
            package_indexes=matching(
                "package_indexes", INDEX_URL, "an index URL (http://, https:// or file://)"
            ),
            image_registries=matching(
                "image_registries", REGISTRY, "a registry such as 'ghcr.io' or 'ghcr.io/acme'"
            ),
            line=line,
            key_lines=tuple((key, self.lines.of(where, 0, key)) for key in sorted(body)),
        )

    def _gate(self, index: int, body: dict[str, Any]) -> Gate:
        line = self.lines.of("gates", index)
        self._no_unknown_keys(body, GATE_KEYS, "a gate", "gates", index)
        kinds = [k for k in ("check_run", "metric", "approvals") if k in body]
        if len(kinds) != 1:
            raise self.fail(
                "a gate needs exactly one of 'check_run', 'metric' or 'approvals'", line
            )
        at: Callable[[str], int] = functools.partial(self.lines.of, "gates", index)
        kind = GateKind(kinds[0])
        if kind is GateKind.CHECK_RUN:
            name = body["check_run"]
            if not isinstance(name, str) or not name.strip():
                raise self.fail("'check_run' must name the check run", at("check_run"))
            return Gate(kind, name, line=at("check_run"))
        if kind is GateKind.APPROVALS:
            count = body["approvals"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise self.fail(
                    f"'approvals' must be a whole number >= 1, not {count!r}", at("approvals")
                )
            if "approvers" not in body:
                raise self.fail("an approvals gate needs 'approvers'", line)
            approvers = self._principals(body["approvers"], "approvers", at("approvers"))
            if not approvers and self.strict:
                raise self.fail(
                    "'approvers' is empty, so the gate could never pass; list who may approve",
                    at("approvers"),
                )
            return Gate(kind, f"{count} approval(s)", count=count, approvers=approvers, line=line)
        return self._metric_gate(body, at)

    def _metric_gate(self, body: dict[str, Any], at: Callable[[str], int]) -> Gate:
        text = body["metric"]
        found = CONDITION.fullmatch(text) if isinstance(text, str) else None
        if found is None:
            raise self.fail(
                f"metric condition {text!r} is not '<metric> <op> production.<metric> "
                "[+|- <number>]' or '<metric> <op> <number>' (op: >= > <= < ==)",
                at("metric"),
            )
        if found.group("metric").startswith("production.") and self.strict:
            raise self.fail(
                f"metric condition {text!r}: the left side is the candidate's metric and the "
                "right side production's, e.g. 'accuracy >= production.accuracy - 0.002'",
                at("metric"),
            )
        require = body.get("require")
        if require is not None and require not in REQUIRE:
            raise self.fail(
                f"'require' must be one of {', '.join(map(repr, REQUIRE))}, not {require!r}",
                at("require"),
            )
        if found.group("constant") is not None:
            offset = float(found.group("constant"))
        elif found.group("delta") is not None:
            offset = float(found.group("delta")) * (-1 if found.group("sign") == "-" else 1)
        else:
            offset = 0.0
        if not math.isfinite(offset):
            raise self.fail(f"metric condition {text!r} has a number out of range", at("metric"))
        return Gate(
            GateKind.METRIC,
            name=text.strip(),
            condition=text.strip(),
            metric=found.group("metric"),
            op=found.group("op"),
            baseline_metric=found.group("baseline"),
            offset=offset,
            require=require,
            line=at("metric"),
        )

    # -- small checks ----------------------------------------------------------------------------

    def _list_of_tables(self, key: str) -> list[dict[str, Any]]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(f"'{key}' must be written as [[{key}]] tables", self.lines.of(key))
        return value

    def _no_unknown_keys(
        self, body: dict[str, Any], allowed: set[str], what: str, table: str, index: int
    ) -> None:
        for key in body:
            if key not in allowed:
                raise self.fail(
                    f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})",
                    self.lines.of(table, index, key),
                )

    def _strings(self, value: Any, what: str, line: int) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"{what} must be a list of non-empty strings", line)
        return tuple(value)

    def _principals(self, value: Any, what: str, line: int) -> tuple[str, ...]:
        names = self._strings(value, what, line)
        for name in names:
            if not PRINCIPAL.fullmatch(name):
                raise self.fail(
                    f"{what}: {name!r} is not a principal ('user:<login>', 'group:<name>', "
                    "'token:<name>' or '*')",
                    line,
                )
            group = (
                name.removeprefix("group:") if name.startswith("group:") and self.strict else None
            )
            if group is not None and self.group_names is None:
                raise self.fail(f"{what}: {name!r}: groups cannot contain groups", line)
            if group is not None and self.group_names is not None and group not in self.group_names:
                known = ", ".join(sorted(self.group_names)) or "none"
                raise self.fail(
                    f"{what}: {name!r} is not a group defined under [groups] (defined: {known})",
                    line,
                )
        return names

    def _check_name(self, name: str, what: str, line: int) -> None:
        if not NAME.fullmatch(name):
            raise self.fail(
                f"{what} name {name!r} must start with a letter and hold only letters, digits, "
                "'_' and '-' (64 at most)",
                line,
            )
