"""Names and refs that cannot be captured, logins and paths that are refused up front, parsers
with bounded input, and the default-lake calls: on every backend (the ``lake`` fixture)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from conftest import LakeAccess

import store
from store import errors
from store.names import MAX_PATH
from store.refs import MAX_REF


def committed(lake: store.Lake, name: str, files: dict[str, bytes], source: str = "main"):
    branch = lake.branch(name, source=source)
    for path, data in files.items():
        branch.write_bytes(path, data)
    branch.commit(f"write {sorted(files)}")
    return branch


def names(lake: store.Lake) -> set[str]:
    return {b.name for b in lake.branches(all_namespaces=True)}


class TestProductionNames:
    def test_a_namespace_branch_named_like_production_is_refused(self, lake: store.Lake) -> None:
        for name in ("main", "user:tester/main", "user:avery/main", "team:ml/main"):
            with pytest.raises(errors.AmbiguousNameError, match="production"):
                lake.branch(name)
        with pytest.raises(errors.AmbiguousNameError):
            lake.branch("main", exist_ok=True)
        assert names(lake) == {"main"}

    def test_a_production_branch_named_like_a_namespace_branch_is_refused(
        self, lake: store.Lake
    ) -> None:
        lake.with_namespace("user:avery").branch("release")
        with pytest.raises(errors.AmbiguousNameError, match="user:avery/release"):
            lake.branch("production/release")
        assert names(lake) == {"main", "user:avery/release"}

    def test_main_means_production_even_when_a_clashing_branch_exists(
        self, lake: store.Lake
    ) -> None:
        # A lake where the clash exists anyway (made before names were checked, or by another
        # lakeFS client): the documented order puts production first.
        lake.backend.create_branch("u-tester__main", lake.resolve("main"))
        own = lake.get_branch("user:tester/main")
        own.write_bytes("a.txt", b"mine")
        own.commit("mine")
        feature = committed(lake, "feature", {"a.txt": b"production"})
        merged = lake.merge(feature.name, into="main")
        assert lake.resolve("production/main") == merged.id
        assert lake.read_bytes("a.txt") == b"production"
        assert lake.read_bytes("a.txt", ref="main") == b"production"
        assert lake.get_branch("main").name == "main"
        assert lake.read_bytes("a.txt", ref="user:tester/main") == b"mine"

    def test_bare_names_fall_back_to_the_own_namespace(self, lake: store.Lake) -> None:
        committed(lake, "exp", {"a.txt": b"mine"})
        assert lake.read_bytes("a.txt", ref="exp") == b"mine"
        assert lake.get_branch("exp").name == "user:tester/exp"


class TestCommitIdNames:
    def test_names_that_look_like_commit_ids_are_refused(self, lake: store.Lake) -> None:
        good = committed(lake, "exp", {"m.bin": b"GOOD"}).head()
        for name in (good.id[:12], good.id, "cafe", "0123", "deadbeef"):
            for qualified in (name, f"production/{name}", f"user:mallory/{name}"):
                with pytest.raises(errors.AmbiguousNameError, match="commit id"):
                    lake.branch(qualified)
            with pytest.raises(errors.AmbiguousNameError, match="commit id"):
                lake.tag(name, "main")
        assert names(lake) == {"main", "user:tester/exp"} and lake.tags() == {}
        assert lake.read_bytes("m.bin", ref=good.id[:12]) == b"GOOD"

    def test_names_with_a_non_hex_character_or_under_four_digits_are_fine(
        self, lake: store.Lake
    ) -> None:
        for name in ("cafe-1", "Cafe", "abc", "face9g"):
            committed(lake, name, {"n.txt": name.encode()})
            assert lake.read_bytes("n.txt", ref=name) == name.encode()
        lake.tag("abc1.0", "user:tester/abc")
        assert lake.read_bytes("n.txt", ref="abc1.0") == b"abc"

    def test_another_namespaces_branch_named_like_a_short_id_does_not_capture_it(
        self, lake: store.Lake
    ) -> None:
        good = committed(lake, "exp", {"m.bin": b"GOOD"}).head()
        evil = committed(lake.with_namespace("user:mallory"), "x", {"m.bin": b"EVIL"}).head()
        short = good.id[:12]
        lake.backend.create_branch(f"u-mallory__{short}", evil.id)  # made before the rule
        assert lake.resolve(short) == good.id
        assert lake.read_bytes("m.bin", ref=short) == b"GOOD"

    def test_a_full_commit_id_wins_over_any_name(self, lake: store.Lake) -> None:
        good = committed(lake, "exp", {"m.bin": b"GOOD"}).head()
        evil = committed(lake, "x", {"m.bin": b"EVIL"}).head()
        with contextlib.suppress(errors.AmbiguousNameError):  # lakeFS refuses it itself
            lake.backend.create_tag(good.id, evil.id)  # made before the rule
        assert lake.read_bytes("m.bin", ref=good.id) == b"GOOD"


class TestTagsAndBranches:
    def test_a_branch_named_like_a_tag_is_refused(self, lake: store.Lake) -> None:
        exp = committed(lake, "exp", {"m.txt": b"released"})
        tagged = lake.tag("v1", exp.name)
        exp.write_bytes("m.txt", b"later")
        exp.commit("later")
        for name in ("v1", "production/v1", "user:avery/v1"):
            with pytest.raises(errors.AmbiguousNameError, match="tag"):
                lake.branch(name, source=exp.name)
        assert lake.read_bytes("m.txt", ref="v1") == b"released"
        assert lake.resolve("v1") == tagged.id

    def test_a_tag_named_like_any_branch_is_refused(self, lake: store.Lake) -> None:
        committed(lake.with_namespace("user:avery"), "exp", {"a": b"1"})
        for name in ("main", "exp"):
            with pytest.raises(errors.AmbiguousNameError, match="branch"):
                lake.tag(name, "main")
        assert lake.tags() == {}

    def test_tags_may_not_hold_the_namespace_separator(self, lake: store.Lake) -> None:
        with pytest.raises(errors.InvalidNameError, match="__"):
            lake.tag("u-tester__exp", "main")
        assert lake.tags() == {}


class TestForeignBranches:
    """Branches another client of the backend made, with names flowlake never produces."""

    FOREIGN = ("_scratch", "dev__old", "u-avery__a__b", "t-x_zz__y")

    def test_foreign_branches_are_listed_read_and_written_by_their_backend_name(
        self, lake: store.Lake
    ) -> None:
        head = lake.resolve("main")
        for name in self.FOREIGN:
            lake.backend.create_branch(name, head)
        listed = {b.name: b.namespace for b in lake.branches()}
        assert {name: listed.get(name) for name in self.FOREIGN} == dict.fromkeys(
            self.FOREIGN, "production"
        )
        for name in self.FOREIGN:
            branch = lake.get_branch(name)
            assert branch.name == name and branch.backend_name == name
            branch.write_bytes("f.txt", name.encode())
            assert lake.read_bytes("f.txt", ref=name) == name.encode()  # uncommitted: seen
            assert lake.read_bytes("f.txt", ref=f"production/{name}") == name.encode()
            commit = branch.commit("c")
            assert lake.resolve(name) == commit.id
            assert [o.path for o in lake.list(ref=name)] == ["f.txt"]
            lake.delete_branch(name)
        assert names(lake) == {"main"}

    def test_a_backend_name_of_a_flowlake_branch_points_to_its_name(self, lake: store.Lake) -> None:
        lake.branch("exp")
        with pytest.raises(errors.InvalidNameError, match="user:tester/exp"):
            lake.get_branch("u-tester__exp")

    def test_tracking_queries_survive_foreign_branches(self, lake: store.Lake) -> None:
        tracking = pytest.importorskip("tracking")
        exp = lake.branch("exp")
        with tracking.start_run(lake, branch=exp.name, name="r") as run:
            run.log_metric("loss", 0.5, step=1)
        for name in self.FOREIGN:
            lake.backend.create_branch(name, lake.resolve(exp.name))
        scratch = lake.get_branch("dev__old")
        scratch.write_bytes("notes.txt", b"uncommitted")
        found = tracking.sql(lake, "SELECT run_id FROM runs")
        assert found.column("run_id").to_pylist() == [run.id]
        assert tracking.sql(lake, "SELECT count(*) AS n FROM runs", ref="dev__old").column(
            "n"
        ).to_pylist() == [1]


class TestLogins:
    BAD = ["a/b", "x:y", "u" * 65, "a\x00b", "a\nb", "a\x85b", "a\u202eb", " a", "a ", "a~b", ""]

    @pytest.mark.parametrize("login", BAD)
    def test_bad_logins_are_refused_before_anything_is_opened(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, login: str
    ) -> None:
        where = tmp_path / "lake"
        with pytest.raises(errors.InvalidNameError, match="login"):
            store.open(where, user=login)
        if "\x00" not in login:  # no environment variable can hold NUL
            monkeypatch.setenv("FLOWLAKE_USER", login or "\t")  # empty: the OS user instead
            with pytest.raises(errors.InvalidNameError, match="login"):
                store.open(where)
        assert not where.exists()

    def test_bad_namespaces_are_refused(self, lake: store.Lake) -> None:
        for namespace in ("user:a/b", "team:x:y", "user:" + "u" * 65, "user:a\tb", "user:e\u0301"):
            with pytest.raises(errors.InvalidNameError):
                lake.with_namespace(namespace)

    @pytest.mark.parametrize("login", ["a.b@corp", "Zoë", "j smith", "日本" * 32, "DOMAIN\\x"])
    def test_unusual_but_valid_logins_read_their_own_branches(
        self, lake: store.Lake, login: str
    ) -> None:
        theirs = lake.with_namespace(f"user:{login}")
        branch = committed(theirs, "exp", {"f.txt": b"1"})
        assert branch.name == f"user:{login}/exp"
        assert branch.read_bytes("f.txt") == b"1"
        assert theirs.read_bytes("f.txt", ref="exp") == b"1"
        assert f"user:{login}/exp" in names(lake)


class TestPaths:
    BAD = ["data/\udcff.txt", "a\x85b", "a\x9bb", "a\x7fb", "a\u2028b", "x" * (MAX_PATH + 1)]

    def test_bad_paths_are_refused_by_every_call(self, lake: store.Lake) -> None:
        branch = committed(lake, "exp", {"keep.txt": b"k"})
        for path in self.BAD:
            self._refused_everywhere(lake, branch, path)
        assert branch.uncommitted() == []

    @staticmethod
    def _refused_everywhere(lake: store.Lake, branch: store.Branch, path: str) -> None:
        calls = [
            lambda: branch.write_bytes(path, b"v"),
            lambda: branch.write_many([("ok.txt", b"1"), (path, b"2")]),
            lambda: branch.read_bytes(path),
            lambda: branch.stat(path),
            lambda: branch.exists(path),
            lambda: branch.delete(path),
            lambda: branch.list(prefix=path),
            lambda: lake.read_bytes(path, ref=branch.name),
        ]
        for call in calls:
            with pytest.raises(errors.InvalidPathError):
                call()

    def test_a_folder_with_a_non_utf8_file_name_is_refused_whole(
        self, lake: store.Lake, tmp_path: Path
    ) -> None:
        folder = tmp_path / "src"
        folder.mkdir()
        (folder / "ok.txt").write_bytes(b"ok")
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as f:
            f.write(b"latin-1 name")
        branch = lake.branch("exp")
        with pytest.raises(errors.InvalidPathError, match="not valid Unicode"):
            branch.upload_dir(folder, prefix="imp")
        assert branch.uncommitted() == []

    def test_non_ascii_paths_round_trip(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        for path in ("é/ü.txt", "data/🙂 smile.bin", "日本/語.txt"):
            branch.write_bytes(path, path.encode())
            assert branch.read_bytes(path) == path.encode()


class TestBoundedParsing:
    def test_a_huge_ref_is_refused_without_parsing_it(self, lake: store.Lake) -> None:
        for ref in ("main" + "~1" * 50_000 + "x", "x" * (MAX_REF + 1)):
            with pytest.raises(errors.InvalidNameError, match="longer than"):
                lake.resolve(ref)
            with pytest.raises(errors.InvalidNameError):
                lake.read_bytes("a", ref=ref)

    def test_malformed_ancestry_is_refused(self, lake: store.Lake) -> None:
        for ref in ("main~x", "main~1x", "~1", "main~1234567890", "main~²", "main\t~1"):
            with pytest.raises(errors.InvalidNameError):
                lake.resolve(ref)

    def test_ancestry_steps_add_up(self, lake: store.Lake) -> None:
        branch = lake.branch("exp")
        ids = [branch.head().id]
        for i in range(3):
            branch.write_bytes("f", b"%d" % i)
            ids.append(branch.commit(f"c{i}").id)
        assert lake.resolve("exp~") == ids[2]
        assert lake.resolve("exp~~") == ids[1]
        assert lake.resolve("exp~1~2") == ids[0]

    def test_huge_names_are_refused(self, lake: store.Lake) -> None:
        huge = "a" * 1_000_000
        for call in (
            lambda: lake.branch(huge),
            lambda: lake.get_branch(huge),
            lambda: lake.tag(huge, "main"),
            lambda: lake.with_namespace(f"user:{huge}"),
        ):
            with pytest.raises(errors.InvalidNameError):
                call()
        with pytest.raises(errors.InvalidPathError):
            lake.read_bytes(huge)


class TestDefaultLake:
    def test_module_calls_act_on_the_default_lake(
        self, lake_access: LakeAccess, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FLOWLAKE_LAKE", lake_access.location)
        assert store.default_location() == lake_access.location
        exp = store.branch("exp")
        try:
            exp.write_bytes("model.bin", b"weights")
            trained = exp.commit("train")
        finally:
            exp.lake.close()
        merged = store.merge(exp.name, into="main")
        assert [c.id for c in store.log(limit=1)] == [merged.id]
        assert [(c.path, str(c.kind)) for c in store.diff("main~1", "main")] == [
            ("model.bin", "added")
        ]
        assert store.tag("v1").id == merged.id
        assert store.log(trained.id, limit=1)[0].message == "train"

    def test_the_default_is_the_lake_folder_and_is_never_created(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("FLOWLAKE_LAKE", raising=False)
        monkeypatch.chdir(tmp_path)
        assert store.default_location() == "./lake"
        with pytest.raises(errors.LakeNotFoundError, match="flowlake init"):
            store.log()
        with pytest.raises(errors.LakeNotFoundError):
            store.branch("exp")
        assert not (tmp_path / "lake").exists()
        store.open("./lake").close()
        assert store.log()[-1].parents == ()
