"""The code snapshot's git listing cache (tracking.gitlisting): an unchanged work tree starts no
git process, and whatever git would answer differently is never taken from the cache.

Real repositories and real git. Each check compares what the cache holds with what git prints
now. Most tests set the racy window to 0 so that files just written may be cached (their
modification times cannot be set back far enough: a folder's ctime stays recent);
``test_nothing_modified_within_the_racy_window_is_cached`` keeps the real window.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tracking import gitlisting, snapshot


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def _fresh(root: Path) -> gitlisting.GitAnswer:
    """What git answers now, asked directly."""
    cwd = str(root)
    try:
        rev = _git(root, "rev-parse", "--show-toplevel", "--git-path", "index", "HEAD")
    except subprocess.CalledProcessError:  # no commit yet
        rev = _git(root, "rev-parse", "--show-toplevel", "--git-path", "index") + "\n"
    top, index, commit = (rev.splitlines() + [""])[:3]
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", "--full-name", "--", "."],
        cwd=cwd,
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8", "surrogateescape")
    return gitlisting.GitAnswer(top, index, commit, listed)


class Lister:
    """Lists a project through the cache, counting the git processes each listing starts."""

    def __init__(self, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cache = str(cache)
        self.spawned: list[tuple[str, ...]] = []
        self.last: list[tuple[str, ...]] = []  # what the last cached listing started
        self.held: frozenset[str] = frozenset()  # the files of the last listing
        real = snapshot._spawn

        def spawn(cwd: str, *args: str) -> subprocess.Popen[bytes] | None:
            self.spawned.append(args)
            return real(cwd, *args)

        monkeypatch.setattr(snapshot, "_spawn", spawn)

    def listing(self, root: Path) -> tuple[snapshot.CodeListing, int]:
        """The cached listing, and how many git processes it started; asserts it is what an
        uncached listing (fresh git) gives.

        Then lists it again as a caller holding every file of the last listing does (a
        compute submit, a run whose files are in the lake), with the process's memory of
        settled listings (:data:`snapshot._settled_listings`) as it was before this listing:
        asserts a listing remembered before whatever changed since is not taken for it."""
        remembered = dict(snapshot._settled_listings)
        self.spawned.clear()
        got = snapshot.listing(root, cache_dir=self.cache)
        self.last = list(self.spawned)
        started = len(self.last)
        fresh = snapshot.listing(root)
        assert got == fresh
        if self.held:
            snapshot._settled_listings.clear()
            snapshot._settled_listings.update(remembered)
            again = snapshot.listing(root, cache_dir=self.cache, held=self.held)
            assert _as_held(again, fresh, self.held) == fresh
        self.held = frozenset(f.sha256 for f in got.files)
        return got, started

    def stored(self, root: Path) -> gitlisting.GitAnswer | None:
        return gitlisting.load(self.cache, str(root), ".")

    def settle(self, root: Path) -> snapshot.CodeListing:
        """List until a listing starts no git process (git status may refresh the index once
        after a change); asserts the cached answer is what git prints now."""
        for attempt in range(4):
            got, started = self.listing(root)
            if started == 0:
                assert self.stored(root) == _fresh(root)
                return got
            if attempt == 0:
                _age_files(root)
        raise AssertionError(f"still starting git after 4 listings: {self.spawned}")

    def names(self, root: Path) -> list[str]:
        """The listed file names (through the cache); asserts the cached answer, when there
        is one, is what git prints now."""
        got, _ = self.listing(root)
        stored = self.stored(root)
        assert stored is None or stored == _fresh(root)
        return [f.path for f in got.files]


def _as_held(
    got: snapshot.CodeListing, fresh: snapshot.CodeListing, held: frozenset[str]
) -> snapshot.CodeListing:
    """``got`` with the bytes of ``fresh`` where it left them out: asserts it left out only
    the bytes of files ``held`` (a caller holding those may not get them read again)."""
    assert all(f.data is not None or f.sha256 in held for f in got.files)
    data = {f.path: f.data for f in fresh.files}
    files = tuple(
        snapshot.ListedFile(f.path, f.size, f.sha256, data.get(f.path)) if f.data is None else f
        for f in got.files
    )
    return snapshot.CodeListing(
        got.root, got.git_commit, got.git_dirty, files, got.truncated, got.skipped
    )


def _age_files(root: Path) -> None:
    """Set the work tree's files an hour back: git status rewrites an index whose entries
    are as recent as the index itself (same second) on every call, until that second is past."""
    back = time.time() - 3600
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            os.utime(os.path.join(folder, name), (back, back), follow_symlinks=False)


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name, value in {"NAME": "t", "EMAIL": "t@example.com"}.items():
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)


@pytest.fixture
def lister(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lister:
    monkeypatch.setattr(snapshot, "RACY_WINDOW_NS", 0)
    return Lister(tmp_path / "cache", monkeypatch)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "build").mkdir()
    (root / "logs").mkdir()
    (root / "train.py").write_text("print('train')\n")
    (root / "pkg" / "model.py").write_text("W = 1\n")
    (root / "pkg" / "sub" / "deep.py").write_text("D = 1\n")
    (root / "build" / "out.py").write_text("generated = 1\n")
    (root / "logs" / "run.log.py").write_text("log = 1\n")
    (root / "pkg" / "notes.py").write_text("n = 1\n")
    (root / ".gitignore").write_text("build/\n*.log.py\n")
    (root / "pkg" / ".gitignore").write_text("*.tmp\n")
    _age_files(root)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "train.py", "pkg/model.py", "pkg/sub", ".gitignore", "pkg/.gitignore")
    _git(root, "commit", "-qm", "first")
    return root


def test_an_unchanged_project_is_listed_without_starting_git(lister: Lister, repo: Path) -> None:
    first = lister.settle(repo)
    names = ["pkg/model.py", "pkg/notes.py", "pkg/sub/deep.py", "train.py"]
    assert [f.path for f in first.files] == names
    again, started = lister.listing(repo)
    assert started == 0 and again == first
    # Editing a listed file changes no listing (its bytes are read anyway).
    (repo / "pkg" / "model.py").write_text("W = 2\n")
    edited, _ = lister.listing(repo)
    assert [args[0] for args in lister.last] == ["status"]
    assert edited.git_dirty is True


def _write(path: str, text: str = "x = 1\n") -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)

    return change


def _append(path: str, text: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        with open(root / path, "a") as f:
            f.write(text)

    return change


def _remove(path: str) -> Callable[[Path], None]:
    return lambda root: (root / path).unlink()


def _run(*args: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        _git(root, *args)

    return change


def _both(*changes: Callable[[Path], None]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        for c in changes:
            c(root)

    return change


#: name: (the change, a file name, whether the listing then holds that file)
CHANGES: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "new file at the top": (_write("new.py"), "new.py", True),
    "new file in a folder": (_write("pkg/sub/new.py"), "pkg/sub/new.py", True),
    "new file in a new folder": (_write("fresh/dir/new.py"), "fresh/dir/new.py", True),
    "deleted untracked file": (_remove("pkg/notes.py"), "pkg/notes.py", False),
    "deleted tracked file": (_remove("pkg/sub/deep.py"), "pkg/sub/deep.py", False),
    "gitignore edited to ignore a file": (
        _append(".gitignore", "notes.py\n"),
        "pkg/notes.py",
        False,
    ),
    "gitignore edited to unignore a file": (
        _append(".gitignore", "!run.log.py\n"),
        "logs/run.log.py",
        True,
    ),
    "nested gitignore edited": (_append("pkg/.gitignore", "notes.py\n"), "pkg/notes.py", False),
    "new nested gitignore": (_write("pkg/sub/.gitignore", "*.py\n"), "pkg/sub/deep.py", True),
    "info/exclude edited": (_append(".git/info/exclude", "notes.py\n"), "pkg/notes.py", False),
    "global excludes file created": (
        _write("../home/.config/git/ignore", "notes.py\n"),
        "pkg/notes.py",
        False,
    ),
    "untracked file added to the index": (_run("add", "pkg/notes.py"), "pkg/notes.py", True),
    "tracked file removed from the index and ignored": (
        _both(_run("rm", "-q", "--cached", "train.py"), _append(".gitignore", "train.py\n")),
        "train.py",
        False,
    ),
    "a folder of only ignored files gets a file": (_write("logs/new.py"), "logs/new.py", True),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_what_git_would_list_differently_is_seen(lister: Lister, repo: Path, name: str) -> None:
    change, path, listed = CHANGES[name]
    lister.settle(repo)
    change(repo)
    assert (path in lister.names(repo)) is listed
    lister.settle(repo)  # the new answer is cached in turn


def test_the_global_excludes_file_named_in_config_is_watched(lister: Lister, repo: Path) -> None:
    excludes = repo.parent / "excludes"
    excludes.write_text("")
    _git(repo, "config", "core.excludesFile", str(excludes))
    (repo / "scratch.py").write_text("s = 1\n")
    lister.settle(repo)
    excludes.write_text("scratch.py\n")
    assert "scratch.py" not in lister.names(repo)
    lister.settle(repo)


def test_a_file_inside_an_ignored_folder_changes_nothing(lister: Lister, repo: Path) -> None:
    lister.settle(repo)
    (repo / "build" / "more.py").write_text("m = 1\n")
    (repo / "build" / "deeper").mkdir()
    _, started = lister.listing(repo)
    assert started == 0


def test_head_moves_are_seen(lister: Lister, repo: Path) -> None:
    def commit(message: str) -> str:
        (repo / "train.py").write_text(f"print({message!r})\n")
        _age_files(repo)
        _git(repo, "commit", "-qam", message)
        return _git(repo, "rev-parse", "HEAD").strip()

    first = lister.settle(repo).git_commit
    moved = commit("second")  # the loose ref moves
    assert moved != first and lister.settle(repo).git_commit == moved
    _git(repo, "pack-refs", "--all")  # the loose ref is gone; packed-refs holds it
    assert lister.settle(repo).git_commit == moved
    again = commit("third")  # a loose ref again, over the packed one
    assert lister.settle(repo).git_commit == again
    _git(repo, "pack-refs", "--all")
    assert lister.settle(repo).git_commit == again
    _git(repo, "update-ref", "refs/heads/main", moved)  # a loose ref only: nothing else moves
    assert lister.settle(repo).git_commit == moved
    _git(repo, "checkout", "-q", "-b", "topic")  # same commit, another branch
    assert lister.settle(repo).git_commit == moved
    on_topic = commit("on topic")
    assert lister.settle(repo).git_commit == on_topic
    _git(repo, "checkout", "-q", "main")
    assert lister.settle(repo).git_commit == moved
    _git(repo, "checkout", "-q", "--detach", first or "")
    assert lister.settle(repo).git_commit == first
    _git(repo, "checkout", "-q", "topic")
    assert lister.settle(repo).git_commit == on_topic


def test_a_repository_without_commits_is_cached_until_its_first_commit(
    lister: Lister, tmp_path: Path
) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / "a.py").write_text("a = 1\n")
    _git(root, "init", "-q")
    assert lister.settle(root).git_commit is None
    _git(root, "add", "a.py")
    _git(root, "commit", "-qm", "first")
    assert lister.settle(root).git_commit == _git(root, "rev-parse", "HEAD").strip()


def test_a_subfolder_sees_its_parents_ignore_rules_and_a_new_repository(
    lister: Lister, repo: Path
) -> None:
    sub = repo / "pkg"
    assert [f.path for f in lister.settle(sub).files] == ["model.py", "notes.py", "sub/deep.py"]
    _git(repo, "rm", "-q", "--cached", "pkg/sub/deep.py")
    lister.settle(sub)
    (repo / ".gitignore").write_text("deep.py\n")  # a rule in the folder above
    assert lister.names(sub) == ["model.py", "notes.py"]
    _git(sub / "sub", "init", "-q")  # pkg/sub becomes a repository of its own
    assert lister.names(sub / "sub") == ["deep.py"]
    assert lister.settle(sub / "sub").git_commit is None


def test_a_worktree_is_cached_apart_from_its_main_tree(lister: Lister, repo: Path) -> None:
    tree = repo.parent / "tree"
    _git(repo, "worktree", "add", "-q", "-b", "wt", str(tree))
    main_commit = lister.settle(repo).git_commit
    assert lister.settle(tree).git_commit == main_commit
    (tree / "only_here.py").write_text("o = 1\n")
    (tree / "scratch.py").write_text("s = 1\n")
    assert "only_here.py" in lister.names(tree)
    _git(tree, "add", "only_here.py")
    _git(tree, "commit", "-qm", "in the worktree")
    moved = lister.settle(tree).git_commit
    assert moved != main_commit and lister.settle(repo).git_commit == main_commit
    _append(".git/info/exclude", "scratch.py\n")(repo)  # the common dir's, read by both
    assert "scratch.py" not in lister.names(tree)
    lister.settle(tree)


def test_an_unchanged_project_is_listed_again_from_memory_with_one_look_at_each_input(
    lister: Lister, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = frozenset(f.sha256 for f in lister.settle(repo).files)
    loads: list[str] = []
    real = gitlisting.load

    def load(*args: str) -> gitlisting.GitAnswer | None:
        loads.append(args[1])
        return real(*args)

    monkeypatch.setattr(gitlisting, "load", load)
    lister.spawned.clear()
    again = snapshot.listing(repo, cache_dir=lister.cache, held=held)
    # Neither git nor the cache entry: the remembered listing, once its inputs were looked at.
    assert lister.spawned == [] and loads == []
    fresh = snapshot.listing(repo)
    assert all(f.data is None for f in again.files) and _as_held(again, fresh, held) == fresh
    # A caller that lacks a file's bytes gets them (listed again, from the cache entry).
    fewer = frozenset(sorted(held)[1:])
    lister.spawned.clear()
    partial = snapshot.listing(repo, cache_dir=lister.cache, held=fewer)
    assert loads == [str(repo)] and lister.spawned == []
    assert _as_held(partial, fresh, fewer) == fresh


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda root, mp: mp.setenv("GIT_DIR", str(root / ".git")), id="GIT_DIR"),
        pytest.param(
            lambda root, mp: mp.setenv("FLOWLAKE_CACHE_DIR", str(root / "pkg")), id="own folder"
        ),
        pytest.param(
            lambda root, mp: (root / "pkg" / "model.py").write_text("W = 22\n"), id="a file"
        ),
        pytest.param(lambda root, mp: (root / "pkg" / "sub" / "deep.py").unlink(), id="removed"),
    ],
)
def test_a_remembered_listing_is_not_used_once_an_input_changed(
    lister: Lister,
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Path, pytest.MonkeyPatch], None],
) -> None:
    held = frozenset(f.sha256 for f in lister.settle(repo).files)
    snapshot.listing(repo, cache_dir=lister.cache, held=held)  # remembered
    change(repo, monkeypatch)
    got = snapshot.listing(repo, cache_dir=lister.cache, held=held)
    fresh = snapshot.listing(repo)
    assert _as_held(got, fresh, held) == fresh


def test_a_listing_whose_git_status_failed_is_not_remembered(
    lister: Lister, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = frozenset(f.sha256 for f in lister.settle(repo).files)
    model = repo / "pkg" / "model.py"
    before = model.stat()
    model.write_text("W = 123\n")  # in place: the cached git answer still holds
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    with monkeypatch.context() as patched:
        patched.setattr(snapshot, "GIT_TIMEOUT_S", 1e-6)  # git status times out once
        timed_out = snapshot.listing(repo, cache_dir=lister.cache, held=held)
    assert timed_out.git_dirty is None
    held |= {f.sha256 for f in timed_out.files}
    got = snapshot.listing(repo, cache_dir=lister.cache, held=held)
    fresh = snapshot.listing(repo)
    assert fresh.git_dirty is True and _as_held(got, fresh, held) == fresh


def test_a_pending_listing_sees_a_file_edited_before_it_finishes(
    lister: Lister, repo: Path
) -> None:
    held = frozenset(f.sha256 for f in lister.settle(repo).files)
    pending = snapshot.PendingListing(repo, cache_dir=lister.cache)
    (repo / "pkg" / "model.py").write_text("W = 77\n")
    got = pending.finish(cache_dir=lister.cache, held=held)
    fresh = snapshot.listing(repo)
    assert _as_held(got, fresh, held) == fresh


def test_a_listing_is_not_remembered_under_a_variable_set_after_it_began(
    lister: Lister, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other-config"
    (other / "git").mkdir(parents=True)
    (other / "git" / "ignore").write_text("notes.py\n")
    held = frozenset(f.sha256 for f in lister.settle(repo).files)
    snapshot._settled_listings.clear()
    pending = snapshot.PendingListing(repo, cache_dir=lister.cache)  # git's answer, as it was
    monkeypatch.setenv("XDG_CONFIG_HOME", str(other))
    pending.finish(cache_dir=lister.cache, held=held)
    got = snapshot.listing(repo, cache_dir=lister.cache, held=held)
    fresh = snapshot.listing(repo)
    assert "pkg/notes.py" not in [f.path for f in fresh.files]
    assert _as_held(got, fresh, held) == fresh


def test_gits_answer_is_not_stored_under_variables_set_while_git_ran(
    lister: Lister, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _age_files(repo)
    other = tmp_path / "other-config"
    (other / "git").mkdir(parents=True)
    (other / "git" / "ignore").write_text("notes.py\n")
    pending = snapshot.PendingListing(repo, cache_dir=lister.cache)  # git starts: no entry yet
    monkeypatch.setenv("XDG_CONFIG_HOME", str(other))
    pending.finish(cache_dir=lister.cache)
    assert lister.stored(repo) is None  # nothing under the new variables' key
    got, _ = lister.listing(repo)  # compares with an uncached listing
    assert "pkg/notes.py" not in [f.path for f in got.files]


def _edit_keeping_size_and_times(root: Path) -> None:
    path = root / "pkg" / "model.py"
    before = path.stat()
    with open(path, "r+") as f:  # same inode, same size
        f.write("W = 2\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _swap_files_of_equal_stats(root: Path) -> None:
    a, b = root / "pkg" / "model.py", root / "pkg" / "notes.py"
    before = a.stat()
    a.rename(root / "swap.tmp")
    b.rename(a)
    (root / "swap.tmp").rename(b)
    for path in (a, b):
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_edit_keeping_size_and_times, id="edit with the time put back"),
        pytest.param(_swap_files_of_equal_stats, id="two files of one size swapped"),
        pytest.param(lambda root: (root / "train.py").chmod(0o755), id="chmod +x"),
    ],
)
def test_a_change_that_keeps_size_and_modification_time_is_seen(
    lister: Lister, repo: Path, change: Callable[[Path], None]
) -> None:
    lister.settle(repo)
    change(repo)
    lister.listing(repo)  # compares with an uncached listing (hashes, bytes, git_dirty)
    lister.listing(repo)


def test_a_file_that_could_not_be_read_is_listed_once_it_can_be(
    lister: Lister, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = frozenset(f.sha256 for f in lister.settle(repo).files)
    (repo / "pkg" / "notes.py").write_text("n = 2\n")  # read again at the next listing

    def failing(path: object, *args: object, **kwargs: object) -> object:
        if str(path).endswith("notes.py"):
            raise OSError(errno.EIO, "Input/output error")
        return open(path, *args, **kwargs)  # type: ignore[call-overload]

    with monkeypatch.context() as patched:
        patched.setattr(snapshot, "open", failing, raising=False)
        during = snapshot.listing(repo, cache_dir=lister.cache, held=held)
    assert "pkg/notes.py" not in [f.path for f in during.files]
    got = snapshot.listing(repo, cache_dir=lister.cache, held=held)
    fresh = snapshot.listing(repo)
    assert "pkg/notes.py" in [f.path for f in fresh.files]
    assert _as_held(got, fresh, held) == fresh


def test_nothing_modified_within_the_racy_window_is_cached(tmp_path: Path, repo: Path) -> None:
    cache = str(tmp_path / "cache")
    snapshot.listing(repo, cache_dir=cache)
    assert gitlisting.load(cache, str(repo), ".") is None
    (repo / "new.py").write_text("n = 1\n")
    got = snapshot.listing(repo, cache_dir=cache)
    assert "new.py" in [f.path for f in got.files] and got == snapshot.listing(repo)


def test_without_a_cache_folder_git_runs_each_time(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "RACY_WINDOW_NS", 0)
    lister = Lister(tmp_path / "unused", monkeypatch)
    for _ in range(2):
        snapshot.listing(repo)
    assert [a[0] for a in lister.spawned].count("ls-files") == 2
    assert not os.path.exists(tmp_path / "unused")


def test_a_pending_listing_taken_from_the_cache_closes_and_finishes(
    lister: Lister, repo: Path
) -> None:
    first = lister.settle(repo)
    lister.spawned.clear()
    pending = snapshot.PendingListing(repo, cache_dir=lister.cache)
    pending.close()
    again = snapshot.PendingListing(repo, cache_dir=lister.cache).finish(cache_dir=lister.cache)
    assert again == first
    assert lister.spawned == []


def test_a_compute_submit_from_an_unchanged_project_starts_no_git(
    lister: Lister, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compute.code import PendingSnapshot

    monkeypatch.setenv("FLOWLAKE_CACHE_DIR", lister.cache)  # where a submit's cache lives
    listed = [f.path for f in lister.settle(repo).files]
    lister.spawned.clear()
    _, checkout = PendingSnapshot(repo).finish(tmp_path / "code")
    assert lister.spawned == []
    held = sorted(p.relative_to(checkout).as_posix() for p in checkout.rglob("*") if p.is_file())
    assert held == listed
    (repo / "pkg" / "added.py").write_text("a = 1\n")
    _, checkout = PendingSnapshot(repo).finish(tmp_path / "code")
    assert (checkout / "pkg" / "added.py").read_text() == "a = 1\n"


@pytest.mark.parametrize(
    "marker",
    [
        pytest.param(lambda d: (d / "pyvenv.cfg").write_text("home = /usr\n"), id="pyvenv.cfg"),
        pytest.param(lambda d: (d / "conda-meta").mkdir(), id="empty conda-meta folder"),
        pytest.param(lambda d: (d / "CACHEDIR.TAG").write_text("Signature: x\n"), id="cachedir"),
    ],
)
def test_non_code_folder_verdicts_are_reused_until_a_marker_appears(
    lister: Lister, repo: Path, monkeypatch: pytest.MonkeyPatch, marker: Callable[[Path], None]
) -> None:
    lister.settle(repo)
    judged: list[str] = []
    real = snapshot.non_code_folder

    def spy(path: str, own: frozenset[str] | None = None) -> bool:
        judged.append(path)
        return real(path, own)

    monkeypatch.setattr(snapshot, "non_code_folder", spy)
    lister.spawned.clear()
    again = snapshot.listing(repo, cache_dir=lister.cache)
    # Nothing changed: no git process, and no folder looked at for markers again.
    assert lister.spawned == [] and judged == []
    assert again == snapshot.listing(repo)
    assert "pkg/sub/deep.py" in [f.path for f in again.files]
    marker(repo / "pkg" / "sub")
    # The folder's modification time moved: the verdicts are made again, and agree with an
    # uncached listing (Lister.listing compares).
    names = [f.path for f in lister.settle(repo).files]
    assert judged and not any(n.startswith("pkg/sub/") for n in names)
    assert "pkg/model.py" in names


def test_reused_verdicts_follow_flowlakes_own_folders(
    lister: Lister, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lister.settle(repo)
    # The compute state folder moved into the project: a folder no file of which changed.
    monkeypatch.setenv("FLOWLAKE_COMPUTE_DIR", str(repo / "pkg" / "sub"))
    got, _ = lister.listing(repo)
    # git's answer is still taken from the cache (git status may run: the files differ).
    assert [args[0] for args in lister.last] in ([], ["status"])
    assert [f.path for f in got.files] == ["pkg/model.py", "pkg/notes.py", "train.py"]


def _stash_untracked(root: Path) -> None:
    _git(root, "stash", "push", "-q", "-u")


def _stash_round_trip(root: Path) -> None:
    (root / "train.py").write_text("print('changed')\n")
    _git(root, "stash", "push", "-q", "-u")
    _git(root, "stash", "pop", "-q")


def _git_mv(root: Path) -> None:
    _git(root, "mv", "pkg/model.py", "pkg/sub/model.py")


def _gitignore_in_new_folder(root: Path) -> None:
    (root / "fresh").mkdir()
    (root / "fresh" / "a.py").write_text("a = 1\n")
    (root / "fresh" / "b.py").write_text("b = 1\n")
    (root / "fresh" / ".gitignore").write_text("b.py\n")


def _negation_in_parent(root: Path) -> None:
    with open(root / ".gitignore", "a") as f:
        f.write("logs/*\n!logs/run.log.py\n")


def _symlinked_folder(root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "lib.py").write_text("x = 1\n")
    os.symlink(outside, root / "linked")


def _file_becomes_folder(root: Path) -> None:
    (root / "pkg" / "notes.py").unlink()
    (root / "pkg" / "notes.py").mkdir()
    (root / "pkg" / "notes.py" / "inner.py").write_text("i = 1\n")


def _checkout_other_branch(root: Path) -> None:
    _git(root, "checkout", "-q", "-b", "other")
    _git(root, "rm", "-q", "pkg/model.py")
    (root / "other.py").write_text("o = 1\n")
    _git(root, "add", "other.py")
    _git(root, "commit", "-qm", "other")
    _git(root, "checkout", "-q", "main")
    _git(root, "checkout", "-q", "other")


def _sparse_checkout(root: Path) -> None:
    _git(root, "sparse-checkout", "set", "--no-cone", "/train.py")


def _untracked_cache(root: Path) -> None:
    _git(root, "config", "core.untrackedCache", "true")
    _git(root, "update-index", "--untracked-cache")
    (root / "pkg" / "sub" / "late.py").write_text("l = 1\n")


def _folder_mtime_set_back(root: Path) -> None:
    """A tool (tar -x, cp -p, rsync -t) puts a folder's old modification time back after its
    entries changed: the ctime still moves, and the stamp holds it."""
    folder = root / "pkg" / "sub"
    before = os.stat(folder)
    (folder / "restored.py").write_text("r = 1\n")
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))


def _gitignore_mtime_set_back(root: Path) -> None:
    ignore = root / "pkg" / ".gitignore"
    before = os.stat(ignore)
    ignore.write_text("*.tmm\n")  # same size
    os.utime(ignore, ns=(before.st_atime_ns, before.st_mtime_ns))
    (root / "pkg" / "x.tmp").write_text("")


def _nested_repository(root: Path) -> None:
    _git(root / "pkg" / "sub", "init", "-q")


PROBES: dict[str, Callable[[Path], None]] = {
    "git stash -u": _stash_untracked,
    "git stash and pop": _stash_round_trip,
    "git mv": _git_mv,
    "gitignore in a new folder": _gitignore_in_new_folder,
    "negation rule in the parent gitignore": _negation_in_parent,
    "symlinked folder": _symlinked_folder,
    "file replaced by a folder": _file_becomes_folder,
    "checkout of a branch with other files": _checkout_other_branch,
    "sparse-checkout set": _sparse_checkout,
    "core.untrackedCache": _untracked_cache,
    "folder mtime set back": _folder_mtime_set_back,
    "gitignore rewritten, mtime set back": _gitignore_mtime_set_back,
    "nested repository appears": _nested_repository,
}


@pytest.mark.parametrize("name", sorted(PROBES))
def test_everyday_git_operations_are_listed_as_git_lists_them(
    lister: Lister, repo: Path, name: str
) -> None:
    lister.settle(repo)
    PROBES[name](repo)
    lister.names(repo)  # compares with an uncached listing and with git's answer
    lister.settle(repo)


def test_a_change_right_after_caching_is_seen(lister: Lister, repo: Path) -> None:
    lister.settle(repo)
    (repo / "pkg" / "now.py").write_text("n = 1\n")  # within the same second
    assert "pkg/now.py" in lister.names(repo)


def test_a_branch_moved_while_the_listing_runs_is_not_cached_stale(
    lister: Lister, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit made by another process after ``git rev-parse`` answered and before the entry
    is stored: the entry must not pair the old commit with the new ref."""
    first = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    second = _git(repo, "rev-parse", "HEAD").strip()
    real = gitlisting.store

    def store_after_a_commit(*args: object, **kwargs: object) -> bool:
        _git(repo, "update-ref", "refs/heads/main", first)  # another process moves main
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitlisting, "store", store_after_a_commit)
    got = snapshot.listing(repo, cache_dir=lister.cache)
    assert got.git_commit == second  # what rev-parse said before the move
    assert lister.stored(repo) is None
    monkeypatch.setattr(gitlisting, "store", real)
    assert snapshot.listing(repo, cache_dir=lister.cache).git_commit == first
