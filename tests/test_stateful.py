"""Random sequences of branch / write / delete / commit / merge against a plain in-memory model."""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

import store
from store import errors

PATHS = st.sampled_from(["a", "b", "d/c", "d/e", "f/g/h"])
DATA = st.sampled_from([b"", b"1", b"2", b"x" * 9000, b"y" * 9000])


class LakeModel(RuleBasedStateMachine):
    """The model: every commit's snapshot (path -> bytes), and each branch's working state."""

    branches = Bundle("branches")

    @initialize(target=branches)
    def open_lake(self):
        self.dir = tempfile.mkdtemp()
        self.lake = store.open(self.dir + "/lake", namespace="user:model")
        main = self.lake.resolve("main")
        self.snapshots: dict[str, dict[str, bytes]] = {main: {}}
        self.working: dict[str, dict[str, bytes]] = {}
        self.count = 0
        return self._new_branch("main")

    def _new_branch(self, source: str) -> str:
        self.count += 1
        name = self.lake.branch(f"b{self.count}", source=source).name
        self.working[name] = dict(self.snapshots[self.lake.resolve(name)])
        return name

    def teardown(self):
        self.lake.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(target=branches, source=branches)
    def branch(self, source):
        return self._new_branch(source)

    @rule(branch=branches, path=PATHS, data=DATA)
    def write(self, branch, path, data):
        self.lake.get_branch(branch).write_bytes(path, data)
        self.working[branch][path] = data

    @rule(branch=branches, path=PATHS)
    def delete(self, branch, path):
        handle = self.lake.get_branch(branch)
        if path in self.working[branch]:
            handle.delete(path)
            del self.working[branch][path]
        else:
            try:
                handle.delete(path)
                raise AssertionError("deleting a missing path succeeded")
            except errors.ObjectNotFoundError:
                pass

    @rule(branch=branches)
    def commit(self, branch):
        handle = self.lake.get_branch(branch)
        head = self.snapshots[handle.head().id]
        if self.working[branch] == head:
            try:
                handle.commit("noop")
                raise AssertionError("empty commit succeeded")
            except errors.NothingToCommitError:
                return
        commit = handle.commit("c")
        self.snapshots[commit.id] = dict(self.working[branch])

    @rule(source=branches, dest=branches, strategy=st.sampled_from([None, "source-wins"]))
    def merge(self, source, dest, strategy):
        if source == dest:
            return
        src_id, dst_id = self.lake.resolve(source), self.lake.resolve(dest)
        dirty = self.working[dest] != self.snapshots[dst_id]
        base_id = self.lake.merge_base(source, dest)
        base = self.snapshots[base_id] if base_id else {}
        src, dst = self.snapshots[src_id], self.snapshots[dst_id]
        theirs = {p for p in base.keys() | src.keys() if base.get(p) != src.get(p)}
        ours = {p for p in base.keys() | dst.keys() if base.get(p) != dst.get(p)}
        conflicts = sorted(p for p in theirs & ours if src.get(p) != dst.get(p))
        try:
            merged = self.lake.merge(source, into=dest, strategy=strategy)
        except errors.DirtyBranchError:
            assert dirty
            return
        except errors.NothingToCommitError:
            assert not dirty and (base_id == src_id or not theirs)
            return
        except errors.ConflictError as exc:
            assert not dirty and strategy is None and exc.conflicts == conflicts
            return
        assert not dirty and (strategy is not None or not conflicts)
        expected = dict(dst)
        for path in theirs:
            if path in ours and strategy != "source-wins":
                continue
            if path in src:
                expected[path] = src[path]
            else:
                expected.pop(path, None)
        self.snapshots[merged.id] = expected
        self.working[dest] = dict(expected)

    @invariant()
    def branches_match_the_model(self):
        if not hasattr(self, "lake"):
            return
        for name, files in self.working.items():
            handle = self.lake.get_branch(name)
            listed = {o.path: o.size for o in handle.list()}
            assert listed == {p: len(d) for p, d in files.items()}, name
            for path, data in files.items():
                assert handle.read_bytes(path) == data

    @invariant()
    def commits_match_their_snapshots(self):
        if not hasattr(self, "lake"):
            return
        for name in self.working:
            commit_id = self.lake.resolve(name)
            snapshot = self.snapshots[commit_id]
            assert {o.path for o in self.lake.list(ref=commit_id)} == set(snapshot)


LakeModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lake_behaves_like_the_model = LakeModel.TestCase
