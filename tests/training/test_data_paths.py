"""Data paths made absolute: what config.yaml records, and a resume compares."""

from dataclasses import dataclass, field
from typing import Optional

from torchflava.training.config import ExpandedPath, absolute_data_paths, expand_user_path


def test_relative_data_paths_are_made_absolute_but_those_a_resumed_run_recorded_relative(tmp_path, monkeypatch):
    """A run's relative data paths are made absolute against the working directory (what its config.yaml records,
    so that a resume from another directory reads the run's files or is refused); a path the resumed run recorded
    relative (before they were recorded absolute) stays as typed, so that it compares equal; absolute paths, URLs,
    None and other values as they are."""

    @dataclass
    class Data:
        train: Optional[str] = "data/train.tsv"
        val: Optional[str] = None
        extra_val: dict = field(default_factory=lambda: {"matched": "dev_m.tsv", "other": "/abs/dev.tsv"})
        shards: str = "s3://bucket/{000..009}.tar"
        count: int = 3

    monkeypatch.chdir(tmp_path)
    names = ("train", "val", "extra_val", "shards", "count")
    new = Data()
    absolute_data_paths(new, names)
    expected = {"matched": str(tmp_path / "dev_m.tsv"), "other": "/abs/dev.tsv"}
    assert (new.train, new.val, new.extra_val) == (str(tmp_path / "data" / "train.tsv"), None, expected)
    assert (new.shards, new.count) == ("s3://bucket/{000..009}.tar", 3)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(  # a run from before: train and one set recorded relative
        "data:\n  train: data/train.tsv\n  extra_val:\n    matched: dev_m.tsv\n"
    )
    resumed = Data()
    absolute_data_paths(resumed, names, tmp_path / "run")
    assert (resumed.train, resumed.extra_val) == ("data/train.tsv", {"matched": "dev_m.tsv", "other": "/abs/dev.tsv"})
    (tmp_path / "run" / "config.yaml").write_text(f"data:\n  train: {tmp_path / 'data' / 'train.tsv'}\n")
    resumed = Data()
    absolute_data_paths(resumed, names, tmp_path / "run")  # recorded absolute: made so, compared equal
    assert resumed.train == str(tmp_path / "data" / "train.tsv")


def test_brace_patterns_file_urls_and_expanded_home_paths_are_made_absolute_only_where_relative(tmp_path, monkeypatch):
    """A brace pattern opening with a group is made absolute only where none of that group's alternatives is absolute
    or a URL (joined to the working directory, '{/data/a.tar,b.tar}' read '<cwd>/data/a.tar'); a ``file:`` URL, an
    empty path and a ``~`` path (expanded: absolute, keeping what was typed for error messages) are left as they
    are."""

    @dataclass
    class Files:
        local: str = "{train,extra}/shard-{000..009}.tar"
        mixed: str = "{/data/a.tar,shards/b.tar}"
        piped: str = "{pipe:cat a.tar,b.tar}"
        inner: str = "shards/{a,/b}.tar"
        url: str = "file:shards/a.tar"
        empty: str = ""
        home: object = None

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    files = Files(home=expand_user_path("~/shards/a.tar"))
    home = files.home
    absolute_data_paths(files, ("local", "mixed", "piped", "inner", "url", "empty", "home"), key="data.files")
    assert files.local == f"{tmp_path}/{{train,extra}}/shard-{{000..009}}.tar"
    assert (files.mixed, files.piped) == ("{/data/a.tar,shards/b.tar}", "{pipe:cat a.tar,b.tar}")
    assert files.inner == f"{tmp_path}/shards/{{a,/b}}.tar"  # (a group after a folder: under it)
    assert (files.url, files.empty) == ("file:shards/a.tar", "")
    assert files.home is home and isinstance(home, ExpandedPath) and home.typed == "~/shards/a.tar"
    assert repr(files.home) == f"'~/shards/a.tar' (= '{tmp_path}/home/shards/a.tar')"


def test_a_relative_path_through_a_symlink_and_up_stays_the_file_that_was_checked(tmp_path, monkeypatch):
    """Found in review: ``link/../f.tsv`` with ``link`` a symlink into another folder names that folder's parent's
    ``f.tsv`` (the OS follows the link, then goes up); ``os.path.abspath`` dropped ``link/..`` by its text and
    recorded (and read) the working directory's ``f.tsv``, another file or none. Joined, not normalised."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "f.tsv").write_text("the file checked\n")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "f.tsv").write_text("another file\n")
    (tmp_path / "cwd" / "link").symlink_to(tmp_path / "real" / "sub")

    @dataclass
    class Data:
        train: str = "link/../f.tsv"

    monkeypatch.chdir(tmp_path / "cwd")
    data = Data()
    absolute_data_paths(data, ("train",))
    assert data.train.startswith("/") and open(data.train).read() == "the file checked\n"
