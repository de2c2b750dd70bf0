"""Data paths: a config section declares them in ``PATHS`` (:class:`DataPaths`); a leading ``~`` is expanded as it is
made, and start_run makes the relative ones absolute (what config.yaml records, and a resume compares)."""

from dataclasses import dataclass, field
from typing import Optional, Union

import pytest
import yaml

from tests.training.test_loop import Toy, ToyData, settings, toy_step
from torchflava.training.config import (
    ConfigError,
    DataPaths,
    ExpandedPath,
    absolute_config_paths,
    absolute_data_paths,
    expand_user_path,
    load_config,
)
from torchflava.training.loop import fit, release_run_directory, start_run
from torchflava.training.schema import OptimConfig, TrainingConfig


@dataclass
class _Shards(DataPaths):  # a researcher's own sections: their paths declared, and no call of their own
    PATHS = ("shards", "index")

    shards: str = "shards/{000..009}.tar"
    index: Optional[str] = "~/index.json"
    name: str = "not/a/path"  # not declared: as typed


@dataclass
class _Data(DataPaths):
    PATHS = ("vocab", "sets")

    vocab: Optional[str] = "vocab.txt"
    sets: dict = field(default_factory=lambda: {"dev": "dev.tsv", "none": None})
    files: _Shards = field(default_factory=_Shards)


@dataclass
class _Run:
    data: _Data
    training: TrainingConfig
    optim: OptimConfig


def _start(config: _Run, validate=lambda config, world_size: None):
    try:
        return start_run(config, validate)
    finally:
        release_run_directory(config.training)


def test_a_recipes_own_data_section_gets_its_declared_paths_expanded_and_made_absolute_by_start_run(
    tmp_path, monkeypatch
):
    """The four recipes named their data paths twice, in each section's ``__post_init__`` (``~`` expanded) and in
    their ``validate`` (made absolute), and a recipe of one's own had to do both. Declared in ``PATHS`` alone, a
    leading ``~`` is expanded as the section is made (validate sees it) and start_run makes the relative paths
    absolute after validate, nested sections included, before the config is recorded; a resume from another working
    directory with the same relative paths is refused naming each key."""
    a, b, home = tmp_path / "a", tmp_path / "b", tmp_path / "home"
    for folder in (a, b):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(a)
    seen = []
    config = _Run(_Data(), *settings("run", max_steps=2, checkpoint_every=2))
    start = _start(config, lambda config, world_size: seen.append((config.data.vocab, config.data.files.index)))
    fit(Toy(), toy_step, ToyData(2), training=config.training, optim=config.optim, shard_layers=(), start=start)
    index = str(home / "index.json")
    assert seen == [("vocab.txt", index)]  # (validate: as typed, ~ expanded)
    data = config.data
    assert (data.vocab, data.sets) == (str(a / "vocab.txt"), {"dev": str(a / "dev.tsv"), "none": None})
    assert (data.files.shards, data.files.name) == (f"{a}/shards/{{000..009}}.tar", "not/a/path")
    assert (data.files.index, data.files.index.typed) == (index, "~/index.json")
    recorded = yaml.safe_load((a / "run" / "config.yaml").read_text())["data"]
    assert recorded == {
        "vocab": str(a / "vocab.txt"),
        "sets": {"dev": str(a / "dev.tsv"), "none": None},
        "files": {"shards": f"{a}/shards/{{000..009}}.tar", "index": index, "name": "not/a/path"},
    }
    monkeypatch.chdir(b)
    with pytest.raises(ConfigError) as caught:
        _start(_Run(_Data(), *settings(a / "run", max_steps=4, resume="auto")))
    assert str(caught.value).startswith(
        f"keys 'data.files.shards' ('{a}/shards/{{000..009}}.tar' -> '{b}/shards/{{000..009}}.tar'), 'data.sets.dev' "
        f"('{a}/dev.tsv' -> '{b}/dev.tsv'), 'data.vocab' ('{a}/vocab.txt' -> '{b}/vocab.txt'): expected the values "
    )
    resumed = _Run(_Data(**recorded | {"files": _Shards(**recorded["files"])}), *settings(a / "run", resume="auto"))
    assert _start(resumed).resume_from == a / "run" / "checkpoints" / "step_00000002"  # (its config.yaml's values)


def test_a_nested_sections_paths_are_compared_with_what_a_resumed_run_recorded_under_its_dotted_key(
    tmp_path, monkeypatch
):
    """A path a run from before recorded relative is kept as typed (it compares equal, and is read as then): looked
    up under the section's own key, ``data.files`` for the nested section, not ``data``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("data:\n  files:\n    shards: shards/{000..009}.tar\n")
    config = _Run(_Data(), *settings("run"))
    absolute_config_paths(config, tmp_path / "run")
    assert (config.data.files.shards, config.data.vocab) == ("shards/{000..009}.tar", str(tmp_path / "vocab.txt"))
    config = _Run(_Data(), *settings("run"))
    absolute_config_paths(config)  # (a new run)
    assert config.data.files.shards == f"{tmp_path}/shards/{{000..009}}.tar"


def test_paths_is_no_key_of_the_config():
    """``PATHS`` (a class variable) is an unknown key, whatever its value: ``data.PATHS=yes`` was refused as a
    boolean where text was expected."""

    @dataclass
    class Schema:
        data: _Data = field(default_factory=_Data)

    for override in ("data.PATHS=yes", "data.files.PATHS=[a]"):
        with pytest.raises(ConfigError, match=r"Key 'PATHS' not in '_(Data|Shards)'$"):
            load_config(Schema, [override])


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


def test_a_sections_own_post_init_runs_after_its_paths_are_expanded_whether_or_not_it_calls_the_base(
    tmp_path, monkeypatch
):
    """Found in review: a section of one's own with a ``__post_init__`` of its own (a check, a derived field) that
    did not call ``super().__post_init__()`` left ``~/index.json`` as typed: validate saw the literal path, and
    start_run then recorded and read ``<cwd>/~/index.json``. The expansion now runs first, and once where it does
    call the base."""
    from dataclasses import InitVar

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    seen = []

    @dataclass
    class Own(DataPaths):
        PATHS = ("index",)

        index: Optional[str] = "~/index.json"
        scale: InitVar[int] = 2

        def __post_init__(self, scale: int) -> None:  # (no super())
            seen.append((self.index, scale))

    @dataclass
    class Chained(Own):
        def __post_init__(self, scale: int) -> None:
            super().__post_init__(scale)
            seen.append(self.index)

    index = str(tmp_path / "home" / "index.json")
    own = Own(scale=3)
    assert (own.index, own.index.typed, seen) == (index, "~/index.json", [(index, 3)])
    seen.clear()
    chained = Chained()
    assert (chained.index, seen) == (index, [(index, 2), index])

    @dataclass
    class Run:
        data: Own = field(default_factory=Own)

    run = Run()
    absolute_config_paths(run)
    assert run.data.index == index  # (not <cwd>/~/index.json)


@dataclass
class _Mixture(DataPaths):
    PATHS = ("vocab",)

    vocab: Optional[str] = "vocab.txt"
    sources: list[_Shards] = field(default_factory=lambda: [_Shards(), _Shards(shards="more/{0..1}.tar")])
    named: dict[str, _Shards] = field(default_factory=lambda: {"extra": _Shards(shards="extra.tar")})
    spare: Optional[_Shards] = None


@dataclass
class _MixtureRun:
    data: _Mixture
    training: TrainingConfig
    optim: OptimConfig


def test_sections_in_a_list_or_mapping_field_have_their_paths_made_absolute_and_compared_on_resume(
    tmp_path, monkeypatch
):
    """Found in review: the walk went through dataclass fields only, so a section in a list (several shard sets) or a
    mapping kept its relative paths: recorded relative, and a resume from another working directory read the files
    there without a word. Each item is walked under its index or key; what a run from before recorded relative in
    such an item stays as typed."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(a)
    config = _MixtureRun(_Mixture(), *settings("run", max_steps=2, checkpoint_every=2))
    start = _start(config)
    fit(Toy(), toy_step, ToyData(2), training=config.training, optim=config.optim, shard_layers=(), start=start)
    data = config.data
    assert [s.shards for s in data.sources] == [f"{a}/shards/{{000..009}}.tar", f"{a}/more/{{0..1}}.tar"]
    assert (data.named["extra"].shards, data.spare) == (f"{a}/extra.tar", None)
    recorded = yaml.safe_load((a / "run" / "config.yaml").read_text())["data"]
    assert [s["shards"] for s in recorded["sources"]] == [f"{a}/shards/{{000..009}}.tar", f"{a}/more/{{0..1}}.tar"]
    assert recorded["named"]["extra"]["shards"] == f"{a}/extra.tar"
    monkeypatch.chdir(b)
    with pytest.raises(ConfigError, match=r"^keys 'data.named.extra.shards' .*'data.sources.*more/\{0..1\}.tar'"):
        _start(_MixtureRun(_Mixture(), *settings(a / "run", max_steps=4, resume="auto")))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text("data:\n  sources:\n  - shards: old/{0..1}.tar\n")
    old = _MixtureRun(_Mixture(sources=[_Shards(shards="old/{0..1}.tar")]), *settings("run"))
    absolute_config_paths(old, tmp_path / "old")
    assert (old.data.sources[0].shards, old.data.vocab) == ("old/{0..1}.tar", str(b / "vocab.txt"))


def test_a_list_of_files_has_each_path_expanded_and_made_absolute(tmp_path, monkeypatch):
    """data.files.pairs_captions may list parquet shards: a list's relative items were recorded as typed (a resume
    from another directory read other files, or none) and its ``~`` left unexpanded."""

    @dataclass
    class Files(DataPaths):
        PATHS = ("captions",)

        captions: Optional[list] = None

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    files = Files(captions=["data/a.parquet", "~/b.parquet", "/abs/c.parquet"])
    assert files.captions[1] == str(tmp_path / "home" / "b.parquet")
    absolute_data_paths(files, Files.PATHS)
    assert files.captions == [
        str(tmp_path / "data" / "a.parquet"),
        str(tmp_path / "home" / "b.parquet"),
        "/abs/c.parquet",
    ]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("data:\n  captions: [data/a.parquet, d.parquet]\n")
    resumed = Files(captions=["data/a.parquet", "d.parquet", "e.parquet"])  # (recorded relative: kept as typed)
    absolute_data_paths(resumed, Files.PATHS, tmp_path / "run")
    assert resumed.captions == ["data/a.parquet", "d.parquet", str(tmp_path / "e.parquet")]


def test_interpolations_in_a_list_of_a_union_field_resolve_as_in_a_string(tmp_path, monkeypatch):
    """A YAML list of parquet shards written with ``${oc.env:DATA}`` or ``${data.root}``, in a field that takes a
    path or a list of them (data.files.pairs_captions), was 'the merged config: ValidationError: the value does not
    fit the schema there', naming no key (OmegaConf's union gives the list ``convert`` False, and on Python 3.11 an
    item's resolved value failed its check): the items resolve, as the same interpolation in a string does."""

    @dataclass
    class Files(DataPaths):
        PATHS = ("captions",)

        root: str = "/unused"
        captions: Optional[Union[str, list[str]]] = None

    @dataclass
    class Config:
        files: Files = field(default_factory=Files)

    monkeypatch.setenv("SHARDS", "/data/coco")
    config = tmp_path / "c.yaml"
    config.write_text("files:\n  root: /r\n  captions: ['${oc.env:SHARDS}/a.parquet', '${files.root}/b.parquet', c]\n")
    assert load_config(Config, [f"config={config}"]).files.captions == ["/data/coco/a.parquet", "/r/b.parquet", "c"]
    config.write_text("files:\n  captions: '${oc.env:SHARDS}/train-*.parquet'\n")
    assert load_config(Config, [f"config={config}"]).files.captions == "/data/coco/train-*.parquet"
    config.write_text("files:\n  captions: ['${oc.env:SHARDS}/a.parquet']\n")
    over = load_config(Config, [f"config={config}", "files.captions=[x.parquet]"])
    assert over.files.captions == ["x.parquet"]


def test_a_list_of_a_union_field_with_a_tilde_is_recorded_as_its_expanded_paths(tmp_path, monkeypatch):
    """data.files.pairs_captions: [~/a.parquet] (an ExpandedPath in a list of a path-or-list field) failed the run's
    start as config.yaml was written: OmegaConf's 'Value [...] of type 'list' is incompatible with type hint
    'Optional[Union[str, list[str]]]'', a traceback from inside it. It is recorded as the expanded path."""
    from torchflava.training.config import config_yaml

    @dataclass
    class Files(DataPaths):
        PATHS = ("captions",)

        captions: Optional[Union[str, list[str]]] = None

    @dataclass
    class Config:
        files: Files = field(default_factory=Files)

    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(Config, ["files.captions=[~/a.parquet,/b.parquet]"])
    assert yaml.safe_load(config_yaml(config)) == {"files": {"captions": [str(tmp_path / "a.parquet"), "/b.parquet"]}}
    config = load_config(Config, ["files.captions=~/x-*.parquet"])
    assert yaml.safe_load(config_yaml(config)) == {"files": {"captions": str(tmp_path / "x-*.parquet")}}
