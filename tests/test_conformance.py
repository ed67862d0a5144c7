"""The store's behaviour, checked identically on every backend (see the ``lake`` fixture)."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

import store
from store import errors


def committed(lake: store.Lake, name: str, files: dict[str, bytes], source: str = "main"):
    branch = lake.branch(name, source=source)
    for path, data in files.items():
        branch.write_bytes(path, data)
    branch.commit(f"write {sorted(files)}")
    return branch


class TestBranches:
    def test_new_lake_has_protected_main_in_production(self, lake: store.Lake) -> None:
        [main] = [b for b in lake.branches() if b.name == "main"]
        assert main.namespace == "production" and main.protected
        assert lake.log("main")[-1].parents == ()

    def test_branch_is_qualified_by_the_current_namespace(self, lake: store.Lake) -> None:
        branch = lake.branch("exp", source="main")
        assert branch.name == "user:tester/exp"
        assert lake.get_branch("exp").name == branch.name
        assert lake.get_branch("user:tester/exp") == branch

    def test_two_namespaces_can_use_the_same_branch_name(self, lake: store.Lake) -> None:
        mine = committed(lake, "exp", {"a.txt": b"mine"})
        avery = lake.with_namespace("user:avery")
        theirs = committed(avery, "exp", {"a.txt": b"theirs"})
        assert mine.name != theirs.name
        assert lake.read_bytes("a.txt", ref="exp") == b"mine"
        assert avery.read_bytes("a.txt", ref="exp") == b"theirs"
        assert lake.read_bytes("a.txt", ref="user:avery/exp") == b"theirs"

    def test_listing_shows_own_namespace_and_production_unless_all(self, lake: store.Lake) -> None:
        lake.branch("mine")
        lake.with_namespace("user:avery").branch("theirs")
        names = {b.name for b in lake.branches()}
        assert names == {"main", "user:tester/mine"}
        everything = {b.name for b in lake.branches(all_namespaces=True)}
        assert "user:avery/theirs" in everything and names <= everything

    def test_production_handle_never_reads_a_same_named_own_branch(self, lake: store.Lake) -> None:
        committed(lake, "feature", {"a.txt": b"production"})
        lake.merge("feature", into="main")
        # A clash flowlake now refuses to create, made directly on the backend.
        lake.backend.create_branch("u-tester__main", lake.resolve("main"))
        own = lake.get_branch("user:tester/main")
        own.write_bytes("a.txt", b"mine")
        own.commit("mine")
        main = lake.get_branch("production/main")
        assert main.read_bytes("a.txt") == b"production"
        assert [c.id for c in main.log()] == [c.id for c in lake.log("production/main")]
        assert lake.read_bytes("a.txt", ref="main") == b"production"  # bare: production first

    def test_branch_shares_its_source_head(self, lake: store.Lake) -> None:
        source = committed(lake, "src", {"x": b"1"})
        copy = lake.branch("copy", source=source.name)
        assert copy.head().id == source.head().id
        assert copy.read_bytes("x") == b"1"

    def test_creating_an_existing_branch_fails(self, lake: store.Lake) -> None:
        lake.branch("exp")
        with pytest.raises(errors.AlreadyExistsError):
            lake.branch("exp")
        assert lake.branch("exp", exist_ok=True).name == "user:tester/exp"

    def test_delete_branch(self, lake: store.Lake) -> None:
        lake.branch("gone")
        lake.delete_branch("gone")
        with pytest.raises(errors.BranchNotFoundError):
            lake.get_branch("gone")

    def test_main_cannot_be_deleted_or_written(self, lake: store.Lake) -> None:
        main = lake.get_branch("main")
        with pytest.raises(errors.ProtectedBranchError):
            main.write_bytes("x", b"1")
        with pytest.raises(errors.ProtectedBranchError):
            lake.delete_branch("main")
        assert lake.list("main") == []


class TestObjects:
    def test_write_read_list_delete(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        branch.write_bytes("models/clf.bin", b"\x00" * 10)
        branch.write_bytes("data/a.txt", b"a")
        branch.write_bytes("data/b.txt", b"b" * 20000)
        assert branch.read_bytes("data/b.txt") == b"b" * 20000
        assert [o.path for o in branch.list()] == ["data/a.txt", "data/b.txt", "models/clf.bin"]
        assert [o.path for o in branch.list(prefix="data/")] == ["data/a.txt", "data/b.txt"]
        assert branch.stat("data/b.txt").size == 20000
        branch.delete("data/a.txt")
        assert not branch.exists("data/a.txt")
        with pytest.raises(errors.ObjectNotFoundError):
            branch.read_bytes("data/a.txt")

    def test_write_many_writes_a_batch_or_nothing_on_a_bad_path(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        assert branch.write_many((f"batch/{i}.txt", str(i).encode()) for i in range(20)) == 20
        assert [branch.read_bytes(f"batch/{i}.txt") for i in (0, 19)] == [b"0", b"19"]
        with pytest.raises(errors.InvalidPathError):
            branch.write_many([("ok.txt", b"1"), ("../bad", b"2")])
        assert not branch.exists("ok.txt")

    def test_overwrite_replaces_content(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        branch.write_bytes("f", b"one")
        branch.commit("one")
        branch.write_bytes("f", b"two")
        assert branch.read_bytes("f") == b"two"
        assert [(c.path, c.kind) for c in branch.uncommitted()] == [("f", store.ChangeKind.CHANGED)]

    def test_tables_round_trip(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        table = pa.table({"x": list(range(1000)), "y": [str(i) for i in range(1000)]})
        branch.write_table("data/train.parquet", table)
        assert branch.read_table("data/train.parquet").equals(table)
        assert branch.read_table("data/train.parquet", columns=["x"]).column_names == ["x"]

    def test_pandas_frames_are_accepted(self, lake: store.Lake) -> None:
        pd = pytest.importorskip("pandas")
        branch = lake.branch("exp")
        branch.write_table("t.parquet", pd.DataFrame({"a": [1, 2]}))
        assert branch.read_table("t.parquet").to_pydict() == {"a": [1, 2]}

    def test_large_file_streams_through(self, lake: store.Lake, tmp_path) -> None:
        source = tmp_path / "model.bin"
        chunk = bytes(range(256)) * 4096
        with open(source, "wb") as f:
            for i in range(24):
                f.write(chunk[i:] + chunk[:i])
        branch = lake.branch("exp")
        info = branch.write_file("models/big.bin", source)
        assert info.size == source.stat().st_size
        with branch.open("models/big.bin") as stream:
            got = b"".join(iter(lambda: stream.read(1 << 20), b""))
        assert got == source.read_bytes()

    def test_write_file_accepts_file_objects(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        branch.write_file("f.bin", io.BytesIO(b"abc" * 10000))
        assert branch.read_bytes("f.bin") == b"abc" * 10000

    def test_folders_round_trip(self, lake: store.Lake, tmp_path) -> None:
        src = tmp_path / "images"
        for i in range(50):
            (src / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
            (src / f"class{i % 3}" / f"{i}.png").write_bytes(bytes([i]) * (500 + i))
        (src / "big.bin").write_bytes(b"z" * (2 << 20))
        branch = lake.branch("exp")
        assert branch.upload_dir(src, prefix="images").files == 51
        branch.commit("images")
        out = tmp_path / "out"
        assert lake.download_dir(out, ref=branch.name, prefix="images") == 51
        for path in src.rglob("*"):
            if path.is_file():
                assert (out / path.relative_to(src)).read_bytes() == path.read_bytes()


class TestCommits:
    def test_commit_returns_durable_commit_with_metadata(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        parent = branch.head().id
        branch.write_bytes("a", b"1")
        commit = branch.commit("add a", metadata={"k": "v", "n": 3})
        assert commit.message == "add a"
        assert dict(commit.metadata) == {"k": "v", "n": "3"}
        assert commit.parents == (parent,)
        assert branch.head() == commit
        assert lake.commit(commit.id).message == "add a"
        assert branch.uncommitted() == []

    def test_commit_without_changes_fails(self, lake: store.Lake) -> None:
        with pytest.raises(errors.NothingToCommitError):
            lake.branch("exp").commit("nothing")

    def test_log_is_newest_first(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        ids = []
        for i in range(3):
            branch.write_bytes("f", str(i).encode())
            ids.append(branch.commit(f"c{i}").id)
        log = lake.log(branch.name)
        assert [c.id for c in log[:3]] == ids[::-1]
        assert [c.id for c in lake.log(branch.name, limit=2)] == ids[::-1][:2]

    def test_refs_resolve_ancestry_prefixes_and_tags(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        ids = []
        for i in range(3):
            branch.write_bytes("f", str(i).encode())
            ids.append(branch.commit(f"c{i}").id)
        assert lake.resolve(f"{branch.name}~1") == ids[1]
        assert lake.resolve("exp~2") == ids[0]
        assert lake.resolve(ids[2][:12]) == ids[2]
        lake.tag("v1", "exp~1")
        assert lake.read_bytes("f", ref="v1") == b"1"
        assert lake.read_bytes("f", ref=ids[0]) == b"0"
        assert lake.tags()["v1"] == ids[1]
        with pytest.raises(errors.AlreadyExistsError):
            lake.tag("v1", "exp")
        lake.delete_tag("v1")
        assert "v1" not in lake.tags()

    def test_reading_a_commit_does_not_see_uncommitted_changes(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"f": b"old"})
        branch.write_bytes("f", b"new")
        assert lake.read_bytes("f", ref=branch.head().id) == b"old"
        assert branch.read_bytes("f") == b"new"

    def test_reset_drops_uncommitted_changes(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"f": b"old"})
        branch.write_bytes("f", b"new")
        branch.write_bytes("g", b"g")
        branch.reset()
        assert branch.uncommitted() == []
        assert branch.read_bytes("f") == b"old"

    def test_transact_commits_on_success_only(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"f": b"0"})
        with branch.transact("good") as tx:
            tx.write_bytes("f", b"1")
        assert branch.read_bytes("f") == b"1"
        with pytest.raises(RuntimeError), branch.transact("bad") as tx:
            tx.write_bytes("f", b"2")
            raise RuntimeError("boom")
        assert branch.read_bytes("f") == b"1"
        assert {b.name for b in lake.branches()} == {"main", branch.name}


class TestDiffMerge:
    def test_diff_lists_added_removed_changed(self, lake: store.Lake) -> None:
        base = committed(lake, "base", {"keep": b"k", "change": b"1", "remove": b"r"})
        feature = lake.branch("feature", source=base.name)
        feature.write_bytes("change", b"2")
        feature.delete("remove")
        feature.write_bytes("add", b"a")
        feature.commit("edit")
        changes = {(c.path, str(c.kind)) for c in lake.diff(base.name, feature.name)}
        assert changes == {("add", "added"), ("change", "changed"), ("remove", "removed")}

    def test_merge_into_main_brings_changes(self, lake: store.Lake) -> None:
        feature = committed(lake, "feature", {"data/x": b"x"})
        merged = lake.merge(feature.name, into="main")
        assert lake.read_bytes("data/x", ref="main") == b"x"
        assert set(merged.parents) == {lake.resolve("main~1"), feature.head().id}
        assert lake.diff(feature.name, "main") == []

    def test_three_way_merge_keeps_both_sides(self, lake: store.Lake) -> None:
        base = committed(lake, "base", {"a": b"a0", "b": b"b0"})
        left = committed(lake, "left", {"a": b"a1"}, source=base.name)
        committed(lake, "right", {"b": b"b1"}, source=base.name)
        lake.merge("right", into=left.name)
        assert left.read_bytes("a") == b"a1" and left.read_bytes("b") == b"b1"

    def test_conflict_lists_paths_and_changes_nothing(self, lake: store.Lake) -> None:
        base = committed(lake, "base", {"a": b"0", "b": b"0", "c": b"0"})
        left = committed(lake, "left", {"a": b"L", "b": b"L", "c": b"same"}, source=base.name)
        committed(lake, "right", {"a": b"R", "b": b"R", "c": b"same"}, source=base.name)
        before = left.head()
        with pytest.raises(errors.ConflictError) as info:
            lake.merge("right", into=left.name)
        assert info.value.conflicts == ["a", "b"]
        assert left.head() == before

    @pytest.mark.parametrize("strategy,expected", [("source-wins", b"R"), ("dest-wins", b"L")])
    def test_strategies_resolve_conflicts(self, lake: store.Lake, strategy, expected) -> None:
        base = committed(lake, "base", {"a": b"0"})
        left = committed(lake, "left", {"a": b"L", "l": b"l"}, source=base.name)
        committed(lake, "right", {"a": b"R", "r": b"r"}, source=base.name)
        lake.merge("right", into=left.name, strategy=strategy)
        assert left.read_bytes("a") == expected
        assert left.read_bytes("r") == b"r" and left.read_bytes("l") == b"l"

    def test_write_then_delete_of_a_new_path_leaves_it_clean(self, lake: store.Lake) -> None:
        target = committed(lake, "target", {"a": b"0"})
        committed(lake, "src", {"new": b"from src"})
        target.write_bytes("new", b"scratch")
        target.delete("new")
        assert target.uncommitted() == []
        lake.merge("src", into=target.name)
        assert target.read_bytes("new") == b"from src"
        assert target.uncommitted() == []

    def test_merge_into_dirty_branch_fails(self, lake: store.Lake) -> None:
        target = committed(lake, "target", {"a": b"0"})
        committed(lake, "src", {"b": b"1"})
        target.write_bytes("dirty", b"d")
        with pytest.raises(errors.DirtyBranchError):
            lake.merge("src", into=target.name)

    def test_merging_nothing_new_fails_cleanly(self, lake: store.Lake) -> None:
        lake.branch("empty")
        with pytest.raises(errors.NothingToCommitError):
            lake.merge("empty", into="main")

    def test_merge_base_is_the_fork_point(self, lake: store.Lake) -> None:
        base = committed(lake, "base", {"a": b"0"})
        fork = base.head().id
        committed(lake, "left", {"l": b"1"}, source=base.name)
        committed(lake, "right", {"r": b"1"}, source=base.name)
        assert lake.merge_base("left", "right") == fork

    def test_revert_undoes_a_commit(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"a": b"1", "b": b"1"})
        branch.write_bytes("a", b"2")
        branch.delete("b")
        bad = branch.commit("bad")
        branch.write_bytes("c", b"3")
        branch.commit("later")
        lake.revert(branch.name, bad.id)
        assert branch.read_bytes("a") == b"1" and branch.read_bytes("b") == b"1"
        assert branch.read_bytes("c") == b"3"

    def test_revert_conflicting_with_later_change_fails(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"a": b"1"})
        branch.write_bytes("a", b"2")
        bad = branch.commit("bad")
        branch.write_bytes("a", b"3")
        branch.commit("later")
        with pytest.raises(errors.ConflictError) as info:
            lake.revert(branch.name, bad.id)
        assert info.value.conflicts == ["a"]


class TestBadInput:
    @pytest.mark.parametrize(
        "path", ["", "/etc/passwd", "a/../b", "..", "a//b", "a/./b", "a\x00b", "a/", "C:/x"]
    )
    def test_bad_paths_are_refused_and_change_nothing(self, lake: store.Lake, path) -> None:
        branch = lake.branch("exp")
        with pytest.raises(errors.InvalidPathError):
            branch.write_bytes(path, b"x")
        assert branch.uncommitted() == []

    @pytest.mark.parametrize("name", ["", "a b", "a__b", "-x", "a/b/c", "ü", "x" * 300, "a:b"])
    def test_bad_branch_names_are_refused(self, lake: store.Lake, name) -> None:
        with pytest.raises(errors.InvalidNameError):
            lake.branch(name)
        assert {b.name for b in lake.branches(all_namespaces=True)} == {"main"}

    @pytest.mark.parametrize("name", ["", "a b", "../x", "x/y", "-v", "v1."])
    def test_bad_tag_names_are_refused(self, lake: store.Lake, name) -> None:
        with pytest.raises(errors.InvalidNameError):
            lake.tag(name, "main")
        assert lake.tags() == {}

    @pytest.mark.parametrize("namespace", ["", "user:", "admin:x", "user:a/b", "prod"])
    def test_bad_namespaces_are_refused(self, lake: store.Lake, namespace) -> None:
        with pytest.raises(errors.InvalidNameError):
            lake.with_namespace(namespace)

    def test_missing_refs_raise_not_found(self, lake: store.Lake) -> None:
        with pytest.raises(errors.RefNotFoundError):
            lake.read_bytes("x", ref="nope")
        with pytest.raises(errors.RefNotFoundError):
            lake.branch("exp", source="nope")
        with pytest.raises(errors.RefNotFoundError):
            lake.resolve("main~5")
        with pytest.raises(KeyError):  # errors also inherit the matching built-ins
            lake.get_branch("nope")

    def test_missing_qualified_branches_are_reported_as_branches(self, lake: store.Lake) -> None:
        for read in (
            lambda: lake.read_bytes("a", ref="user:tester/nope"),
            lambda: lake.list(ref="user:tester/nope"),
            lambda: lake.exists("a", ref="user:avery/nope"),
            lambda: lake.merge("user:tester/nope", into="main"),
        ):
            with pytest.raises(errors.BranchNotFoundError, match="nope"):
                read()

    def test_merging_a_branch_into_itself_is_refused(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"a": b"1"})
        head = branch.head()
        with pytest.raises(errors.InvalidArgumentError):
            lake.merge(branch.name, into=branch.name)
        assert branch.head() == head

    def test_unknown_merge_strategy_is_refused(self, lake: store.Lake) -> None:
        committed(lake, "exp", {"a": b"1"})
        with pytest.raises(errors.InvalidArgumentError):
            lake.merge("exp", into="main", strategy="theirs")  # type: ignore[arg-type]

    def test_truncated_parquet_gets_a_clear_error(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        branch.write_table("t.parquet", pa.table({"x": list(range(100))}))
        data = branch.read_bytes("t.parquet")
        branch.write_bytes("t.parquet", data[: len(data) // 2])
        with pytest.raises(errors.InvalidTableError, match="t.parquet"):
            branch.read_table("t.parquet")

    def test_deleting_a_missing_path_changes_nothing(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"a": b"1"})
        with pytest.raises(errors.ObjectNotFoundError):
            branch.delete("a", "missing")
        assert branch.exists("a") and branch.uncommitted() == []

    def test_non_bytes_and_non_tables_are_refused(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        with pytest.raises(errors.InvalidArgumentError):
            branch.write_bytes("a", "text")  # type: ignore[arg-type]
        with pytest.raises(errors.InvalidArgumentError):
            branch.write_table("t.parquet", [1, 2, 3])
        assert branch.uncommitted() == []

    @pytest.mark.parametrize("limit", [0, -1, 2.5, "5", True])
    def test_log_limit_must_be_none_or_an_int_of_at_least_one(
        self, lake: store.Lake, limit: object
    ) -> None:
        with pytest.raises(errors.InvalidArgumentError, match=f"limit .*{limit!r}"):
            lake.log("main", limit=limit)  # type: ignore[arg-type]

    def test_log_limit_keeps_the_newest_commits(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"a": b"1"})
        assert [c.id for c in branch.log(limit=1)] == [branch.head().id]

    @pytest.mark.parametrize(
        ("ref", "hint"),
        [
            ("main^", "writes the parent as 'main~1'"),
            ("main^2", "writes the parent as 'main~1'"),
            ("HEAD", "name the branch"),
            ("HEAD~1", "name the branch"),
        ],
    )
    def test_git_style_refs_are_not_found_with_a_hint(
        self, lake: store.Lake, ref: str, hint: str
    ) -> None:
        with pytest.raises(
            errors.RefNotFoundError, match="no branch, tag or commit named "
        ) as info:
            lake.log(ref)
        assert hint in str(info.value)


_LOCATIONS = {"embedded": "lake", "lakefs": "lakefs://repo"}


@pytest.mark.parametrize("kind", sorted(_LOCATIONS))
def test_an_unknown_open_option_is_named_with_the_accepted_ones(tmp_path, kind: str) -> None:
    location = _LOCATIONS[kind] if kind == "lakefs" else str(tmp_path / "lake")
    with pytest.raises(errors.InvalidArgumentError, match="unknown option 'perimetr'") as info:
        store.open(location, perimetr="x")
    assert "create" in str(info.value)
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize("kind", sorted(_LOCATIONS))
@pytest.mark.parametrize(
    ("argument", "value"),
    [("perimeter", ""), ("perimeter", 5), ("token", ""), ("token", 5), ("token", b"s3cret")],
)
def test_perimeter_and_token_must_be_non_empty_strings(
    tmp_path, kind: str, argument: str, value: object
) -> None:
    location = _LOCATIONS[kind] if kind == "lakefs" else str(tmp_path / "lake")
    with pytest.raises(
        errors.InvalidArgumentError, match=f"{argument} must be a non-empty"
    ) as info:
        store.open(location, **{argument: value})
    assert "s3cret" not in str(info.value)
    assert not (tmp_path / "lake").exists()


def test_the_checked_open_options_are_exactly_what_each_backend_takes() -> None:
    import inspect

    from store import _BACKEND_OPTIONS
    from store.backends.embedded.backend import EmbeddedBackend
    from store.backends.lakefs.backend import LakeFSBackend

    def keywords(function: object, *skip: str) -> set[str]:
        parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
        plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name for p in parameters if p.kind in plain and p.name not in skip}

    assert _BACKEND_OPTIONS["embedded"] == keywords(EmbeddedBackend.open, "path")
    lakefs = keywords(LakeFSBackend.from_config, "repository")
    lakefs |= keywords(LakeFSBackend.__init__, "self", "client", "repository")
    assert _BACKEND_OPTIONS["lakefs"] == lakefs
