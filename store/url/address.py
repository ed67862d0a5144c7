"""``flowlake://<ref>/<path>`` URLs: which ref and which object path a URL names.

The ref is the first path segment: a bare branch name, a tag, a commit id or unique prefix, any
of them with ``~N``. A namespace-qualified branch spans two segments, because its name holds a
``/``: when the first segment is a namespace (``production``, or it holds ``:`` as in
``user:avery`` and ``team:vision``), the ref is ``<namespace>/<branch>``. No branch, tag or commit
name can hold ``:``, so the only name a URL cannot spell bare is a tag called ``production``.

==================================================  ==========================  ================
URL                                                 ref                         path
==================================================  ==========================  ================
``flowlake://main/data/train.parquet``              ``main``                    ``data/...``
``flowlake://v1/data/train.parquet``                ``v1`` (a tag)              ``data/...``
``flowlake://exp~2/models/clf.bin``                 ``exp~2``                   ``models/...``
``flowlake://user:avery/exp/data/x.csv``            ``user:avery/exp``          ``data/x.csv``
``flowlake://production/main/data``                 ``production/main``         ``data``
==================================================  ==========================  ================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from store.errors import InvalidNameError
from store.names import validate_path

if TYPE_CHECKING:
    from store.branch import Branch

SCHEME = "flowlake"
PREFIX = f"{SCHEME}://"
_PRODUCTION = "production"


def _is_namespace(segment: str) -> bool:
    return segment == _PRODUCTION or ":" in segment


@dataclass(frozen=True)
class LakeURL:
    """A parsed ``flowlake://`` URL.

    Attributes:
        ref: the ref as written (``main``, ``v1``, ``user:avery/exp``, ``abc123~1``).
        path: the object or folder path inside the ref; ``""`` for the ref's root.
    """

    ref: str
    path: str = ""

    @classmethod
    def parse(cls, url: str) -> LakeURL:
        """Parse ``flowlake://<ref>/<path>`` or the same without the scheme.

        Trailing slashes are ignored (``flowlake://main/data/`` is the folder ``data``). The ref
        is checked when it is resolved; a non-empty path is checked here.

        Raises:
            InvalidNameError: no ref, or a namespace without a branch.
            InvalidPathError: the path has an empty, ``.`` or ``..`` part, or other forbidden
                characters (see :func:`store.names.validate_path`).
        """
        if not isinstance(url, str):
            raise InvalidNameError(f"a flowlake URL must be a string, got {type(url).__name__}")
        text = url[len(PREFIX) :] if url.startswith(PREFIX) else url
        text = text.rstrip("/")
        first, _, rest = text.partition("/")
        if not first:
            raise InvalidNameError(
                f"URL {url!r} names no ref: use {PREFIX}<ref>/<path>, "
                f"for example {PREFIX}main/data/train.parquet"
            )
        if _is_namespace(first):
            branch, _, rest = rest.partition("/")
            if not branch:
                raise InvalidNameError(
                    f"URL {url!r} names the namespace {first!r} but no branch: use "
                    f"{PREFIX}{first}/<branch>/<path>"
                )
            ref = f"{first}/{branch}"
        else:
            ref = first
        if rest:
            validate_path(rest)
        return cls(ref, rest)

    @property
    def name(self) -> str:
        """The URL without its scheme, as fsspec names paths: ``<ref>`` or ``<ref>/<path>``."""
        return f"{self.ref}/{self.path}" if self.path else self.ref

    def __str__(self) -> str:
        return PREFIX + self.name

    def child(self, path: str) -> LakeURL:
        """The URL of ``path`` (a full path inside the ref) at the same ref."""
        return LakeURL(self.ref, path)


def branch_ref(branch: Branch) -> str:
    """The ref naming exactly ``branch`` (``user:avery/exp``, ``production/main``), where its
    bare name could mean another branch."""
    return branch.name if "/" in branch.name else f"{branch.namespace}/{branch.name}"
