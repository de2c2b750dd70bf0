"""Typed configs: defaults, YAML and dotlist merging, precedence, strict keys and types, saving, and config
sections derived from a builder's signature."""

import dataclasses
from dataclasses import dataclass, field
import enum
import os
from typing import Optional, Union

import pytest
import torch

from torchflava.training.config import (
    ConfigError,
    builder_config,
    check_resume_config,
    config_yaml,
    load_config,
    save_config,
)
from torchflava.training.schema import TrainingConfig


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Schema:
    name: Optional[str] = None
    max_steps: int = 10
    optim: Optim = field(default_factory=Optim)


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_defaults_without_arguments():
    config = load_config(Schema, [])
    assert config == Schema() and isinstance(config, Schema) and isinstance(config.optim, Optim)


def test_yaml_then_dotlist(tmp_path):
    file = write(tmp_path / "run.yaml", "max_steps: 20\noptim:\n  lr: 0.01\n")
    config = load_config(Schema, [f"config={file}", "optim.betas=[0.8,0.95]", "name=tiny"])
    assert config == Schema(name="tiny", max_steps=20, optim=Optim(lr=0.01, betas=[0.8, 0.95]))
    assert isinstance(config.optim, Optim) and isinstance(config.optim.betas, list)
    assert type(config.max_steps) is int and type(config.optim.lr) is float
    assert load_config(Schema, ["optim.lr=1"]).optim.lr == 1.0  # an int for a float field is converted
    assert load_config(Schema, ["name=null"]).name is None
    assert load_config(Schema, ["name=a=b"]).name == "a=b"  # split at the first '=' only


def test_dotlist_wins_over_the_file_in_any_order(tmp_path):
    file = write(tmp_path / "run.yaml", "max_steps: 20\nname: from-file\n")
    for argv in ([f"config={file}", "max_steps=30"], ["max_steps=30", f"config={file}"]):
        config = load_config(Schema, argv)
        assert config.max_steps == 30 and config.name == "from-file"
    # Several files merge in order, the later one winning.
    second = write(tmp_path / "second.yaml", "max_steps: 40\n")
    assert load_config(Schema, [f"config={file}", f"config={second}"]).max_steps == 40


@pytest.mark.parametrize("argv, key", [(["optim.momentum=0.9"], "optim.momentum"), (["steps=3"], "steps")])
def test_unknown_key_in_the_dotlist(argv, key):
    with pytest.raises(ConfigError, match=key):
        load_config(Schema, argv)


def test_unknown_key_in_the_file(tmp_path):
    file = write(tmp_path / "run.yaml", "optim:\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="optim.momentum"):
        load_config(Schema, [f"config={file}"])


@pytest.mark.parametrize(
    "argv, key",
    [
        (["max_steps=abc"], "max_steps"),
        (["max_steps=1.5"], "max_steps"),
        (["optim.lr=fast"], "optim.lr"),
        (["optim.betas=[a,b]"], "optim.betas"),
    ],
)
def test_wrong_type_names_the_key(argv, key):
    with pytest.raises(ConfigError, match=key) as info:
        load_config(Schema, argv)
    assert isinstance(info.value, ValueError)  # ConfigError is a ValueError


def test_wrong_type_in_the_file(tmp_path):
    file = write(tmp_path / "run.yaml", "max_steps: abc\n")
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(Schema, [f"config={file}"])


def test_scalar_for_a_nested_section_names_the_key():
    with pytest.raises(ConfigError, match="optim"):
        load_config(Schema, ["optim=3"])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["optim.betas={a: 1}"], r"override 'optim.betas=\{a: 1\}': Cannot merge incompatible container types"),
        (["optim={lr: [1, 2]}"], r"optim"),
        (["name=["], r"override 'name=\[': the value is not valid YAML"),
    ],
)
def test_containers_of_the_wrong_kind_and_bad_yaml_name_the_override(argv, match):
    with pytest.raises(ConfigError, match=match) as error:
        load_config(Schema, argv)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["optim=3"], "override 'optim=3': key 'optim': expected a section (key: value, ...), got 3"),
        (["optim=null"], "override 'optim=null': key 'optim': expected a section (key: value, ...), got None"),
        (["optim.betas=0.9"], "override 'optim.betas=0.9': key 'optim.betas': expected a list ([a, b, ...]), got 0.9"),
        (
            ["optim.betas={a: 1}"],
            "override 'optim.betas={a: 1}': Cannot merge incompatible container types (key 'optim.betas': expected a "
            "list ([a, b, ...]), got {'a': 1})",
        ),
    ],
)
def test_a_value_of_another_kind_than_a_section_or_list_names_both_kinds(argv, message):
    """These named the override only: 'ValidationError: the value does not fit the schema there', or
    OmegaConf's 'AnyNode is not a ListConfig, TupleConfig, list, or tuple'."""
    with pytest.raises(ConfigError) as error:
        load_config(Schema, argv)
    assert str(error.value) == message


def test_a_value_for_a_section_in_a_file_names_the_file_and_the_key(tmp_path):
    file = write(tmp_path / "run.yaml", "optim: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(Schema, [f"config={file}"])
    assert str(error.value) == f"config file {str(file)!r}: key 'optim': expected a section (key: value, ...), got 3"


def test_a_list_for_a_mapping_in_a_file_names_the_file(tmp_path):
    file = write(tmp_path / "run.yaml", "optim: [1, 2]\n")
    with pytest.raises(ConfigError, match="run.yaml"):
        load_config(Schema, [f"config={file}"])


def test_argument_without_equals():
    with pytest.raises(ConfigError, match="'max_steps'"):
        load_config(Schema, ["max_steps"])


def test_missing_or_malformed_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(Schema, [f"config={missing}"])
    listing = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Schema, [f"config={listing}"])


def test_a_directory_or_device_given_as_the_config_file_is_named_so(tmp_path):
    for path, kind in ((tmp_path, "a directory"), ("/dev/null", "not a regular file")):
        with pytest.raises(ConfigError) as error:
            load_config(Schema, [f"config={path}"])
        assert str(error.value) == f"config: expected a YAML file, got {str(path)!r} ({kind})"  # was 'no such file'


def test_an_empty_config_path_is_named_so():
    with pytest.raises(ConfigError) as error:
        load_config(Schema, ["config="])
    assert (
        str(error.value) == "config: expected the path of a YAML file, got '' (nothing after config=)"
    )  # was '(a directory)'


@dataclass
class _Multipliers:
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    optim: Optim = field(default_factory=Optim)


def test_a_mapping_given_whole_replaces_the_files_and_a_section_is_updated(tmp_path):
    """``lr_multipliers={}`` kept every entry the file set (a merge), silently; a mapping given whole now
    replaces the file's, one given key by key still updates it, and a schema section keeps its other keys."""
    path = write(tmp_path / "c.yaml", "lr_multipliers: {text_encoder: 0.01, text_projection: 0.01}\noptim: {lr: 0.5}\n")
    assert load_config(_Multipliers, [f"config={path}", "lr_multipliers={}"]).lr_multipliers == {}
    given = load_config(_Multipliers, [f"config={path}", "lr_multipliers={text_encoder: 0.1}"])
    assert given.lr_multipliers == {"text_encoder": 0.1}
    one = load_config(_Multipliers, [f"config={path}", "lr_multipliers.text_encoder=0.1"])
    assert one.lr_multipliers == {"text_encoder": 0.1, "text_projection": 0.01}
    both = load_config(_Multipliers, [f"config={path}", "lr_multipliers={}", "lr_multipliers.vision=2"])
    assert both.lr_multipliers == {"vision": 2.0}
    section = load_config(_Multipliers, [f"config={path}", "optim={betas: [0.1, 0.2]}"]).optim
    assert section == Optim(lr=0.5, betas=[0.1, 0.2])
    with pytest.raises(ConfigError, match="^key 'lr_multipliers.a': Value 'x' of type 'str' could not be converted"):
        load_config(_Multipliers, [f"config={path}", "lr_multipliers={a: x}"])


@dataclass
class _Texts:
    name: Optional[str] = None
    templates: list[str] = field(default_factory=list)
    max_steps: int = 10
    optim: Optim = field(default_factory=Optim)


def test_text_that_yaml_reads_as_a_number_is_kept_as_written(tmp_path):
    """YAML read 0042 as the octal number 34, 1.50 as 1.5, 1:30 as 90 and 1e3 as 1000.0, which OmegaConf then
    turned into the text '34', ...: a run named training.output_dir=0042 wrote to the directory '34'. Where
    the schema takes text, the text as written is kept; numbers stay numbers where it takes numbers."""
    for written in ("0042", "1.50", "1:30", "1e3", "007", "0x1F", "12_34"):
        assert load_config(_Texts, [f"name={written}"]).name == written
        assert load_config(_Texts, [f"name= {written}"]).name == written
        path = write(tmp_path / "c.yaml", f"name: {written}\ntemplates: [{written}, 'a {{}}']\nmax_steps: 12\n")
        loaded = load_config(_Texts, [f"config={path}"])
        assert (loaded.name, loaded.templates, loaded.max_steps) == (written, [written, "a {}"], 12)
    assert load_config(_Texts, ["optim={lr: 1.50}", "max_steps=1_000"]) == _Texts(max_steps=1000, optim=Optim(lr=1.5))
    assert load_config(_Texts, ["name=null", "templates=[1.50]"]) == _Texts(templates=["1.50"])


def test_a_number_with_a_leading_zero_is_refused_not_read_as_octal(tmp_path):
    """YAML reads 010 as the octal 8: ``max_steps=010`` trained 8 steps, silently. Refused naming the key, in an
    override or a file; a leading 0 that does not change the value (07, 00), hex and quoted text pass."""
    with pytest.raises(ConfigError) as error:
        load_config(Schema, ["max_steps=010"])
    assert str(error.value) == (
        "key 'max_steps': expected a decimal number, got 010 (YAML reads a leading 0 as octal: 8); write 10 for "
        "the decimal, or 8"
    )
    path = write(tmp_path / "c.yaml", "optim: {lr: 0100}\n")
    with pytest.raises(ConfigError, match="^key 'optim.lr': expected a decimal number, got 0100 .*octal: 64"):
        load_config(Schema, [f"config={path}"])
    for written, read in (("07", 7), ("00", 0), ("0x10", 16), ("'010'", 10), ("1_000", 1000)):
        assert load_config(Schema, [f"max_steps={written}"]).max_steps == read


def test_a_leading_zero_in_a_list_or_mapping_of_numbers_is_refused_too():
    """optim.betas=[010, 0.98] gave [8.0, 0.98], and a multiplier of 010 was 8.0, silently."""
    from torchflava.training.schema import OptimConfig

    @dataclass
    class _Run:
        optim: OptimConfig = field(default_factory=OptimConfig)

    for override, where in (
        ("optim.betas=[010,0.98]", "optim.betas[0]"),
        ("optim.lr_multipliers.text_encoder=010", "optim.lr_multipliers.text_encoder"),
        ("optim.lr_multipliers={text_encoder: 010}", "optim.lr_multipliers.text_encoder"),
    ):
        with pytest.raises(ConfigError) as error:
            load_config(_Run, [override])
        assert str(error.value).startswith(f"key '{where}': expected a decimal number, got 010 (YAML reads a leading 0")
    assert load_config(_Run, ["optim.betas=[0.9,00]", "optim.lr_multipliers={a: 07}"]).optim.betas == [0.9, 0.0]


def test_save_config_round_trip(tmp_path):
    config = Schema(name="run-7", max_steps=3, optim=Optim(lr=0.5, betas=[0.1, 0.2]))
    path = tmp_path / "saved" / "config.yaml"  # the directory is created
    save_config(config, path)
    assert load_config(Schema, [f"config={path}"]) == config
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]
    text = path.read_text()
    assert "name: run-7" in text and "max_steps: 3" in text and "lr: 0.5" in text
    save_config(Schema(), path)  # overwriting, None included
    assert load_config(Schema, [f"config={path}"]) == Schema()


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def sample_builder(
    *,
    width: int = 8,
    rate: float = 0.5,
    name: str = "x",
    flag: bool = False,
    path: Optional[Union[str, os.PathLike]] = None,
    colour: Colour = Colour.RED,
    layers: Optional[int] = None,
    module: Optional[torch.nn.Module] = None,
) -> dict:
    """Returns its arguments."""
    return dict(width=width, rate=rate, name=name, flag=flag, path=path, colour=colour, layers=layers)


def test_builder_config_holds_the_builders_arguments(tmp_path):
    Section = builder_config(sample_builder, name="Section", exclude=("module", "not_an_argument"))
    fields = {f.name: (f.type, f.default) for f in dataclasses.fields(Section)}
    assert fields == {
        "width": (int, 8),
        "rate": (float, 0.5),
        "name": (str, "x"),
        "flag": (bool, False),
        "path": (Optional[str], None),
        "colour": (Colour, Colour.RED),
        "layers": (Optional[int], None),
    }
    assert "sample_builder" in Section.__doc__

    @dataclass
    class Schema:
        model: Section = field(default_factory=Section)

    file = write(tmp_path / "run.yaml", "model:\n  width: 16\n  colour: BLUE\n")
    config = load_config(Schema, [f"config={file}", "model.path=/data", "model.layers=3"])
    assert sample_builder(**dataclasses.asdict(config.model)) == dict(
        width=16, rate=0.5, name="x", flag=False, path="/data", colour=Colour.BLUE, layers=3
    )
    with pytest.raises(ConfigError, match="model.widht"):  # a misspelt argument is an unknown key
        load_config(Schema, ["model.widht=3"])
    with pytest.raises(ConfigError, match="model.width"):
        load_config(Schema, ["model.width=wide"])


def test_builder_config_refuses_what_a_config_cannot_hold():
    with pytest.raises(TypeError, match=r"sample_builder\(module\): a config cannot hold"):
        builder_config(sample_builder, name="Section")

    def positional(size, *, depth: int = 2):
        return size, depth

    with pytest.raises(TypeError, match=r"positional\(size\): has no default"):
        builder_config(positional, name="Section")
    assert [f.name for f in dataclasses.fields(builder_config(positional, name="S", exclude=("size",)))] == ["depth"]

    def either(*, mode: Union[bool, str] = False):
        return mode

    with pytest.raises(TypeError, match=r"either\(mode\): a config cannot hold the union"):
        builder_config(either, name="Section")


@dataclass
class _Training:
    output_dir: str = "runs/a"
    seed: int = 0


@dataclass
class _Run:
    training: _Training = field(default_factory=_Training)


@dataclass
class _TwoSeeds:
    training: _Training = field(default_factory=_Training)
    data_seed: int = 0


def test_a_refused_resume_says_key_for_one_and_keys_for_several(tmp_path):
    save_config(_TwoSeeds(), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"^key 'data_seed' \(0 -> 1\): expected the values"):
        check_resume_config(tmp_path / "config.yaml", _TwoSeeds(data_seed=1))
    with pytest.raises(
        ConfigError, match=r"^keys 'data_seed' \(0 -> 1\), 'training.seed' \(0 -> 2\): expected the values"
    ):
        check_resume_config(tmp_path / "config.yaml", _TwoSeeds(_Training(seed=2), data_seed=1))


def test_a_resumed_run_may_spell_or_place_its_directory_otherwise(tmp_path):
    save_config(_Run(_Training(output_dir=str(tmp_path))), tmp_path / "config.yaml")
    for spelt in (f"{tmp_path}/", os.path.relpath(tmp_path), str(tmp_path.parent / "moved")):
        assert check_resume_config(tmp_path / "config.yaml", _Run(_Training(output_dir=spelt))) == []
    with pytest.raises(ConfigError, match="^key 'training.seed' \\(0 -> 1\\): "):  # what it trains stays refused
        check_resume_config(tmp_path / "config.yaml", _Run(_Training(output_dir=str(tmp_path), seed=1)))


@dataclass
class _Recipe:
    training: TrainingConfig = field(default_factory=TrainingConfig)


def test_a_run_recorded_before_the_collective_timeout_existed_resumes_with_it_set_or_not(tmp_path):
    """How long a rank waits for the others changes nothing trained: free on resume, and a config.yaml
    written before the key existed (no such line) resumes with it unset or set."""
    save_config(_Recipe(), tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    old = "".join(line for line in text.splitlines(keepends=True) if "collective_timeout_s" not in line)
    assert old != text
    (tmp_path / "config.yaml").write_text(old)
    for seconds in (None, 120.0):
        assert (
            check_resume_config(tmp_path / "config.yaml", _Recipe(TrainingConfig(collective_timeout_s=seconds))) == []
        )
    save_config(_Recipe(TrainingConfig(collective_timeout_s=120.0)), tmp_path / "config.yaml")
    assert check_resume_config(tmp_path / "config.yaml", _Recipe(TrainingConfig(collective_timeout_s=5))) == []
    with pytest.raises(ConfigError, match=r"^key 'training.seed' \(0 -> 1\): "):  # what it trains stays refused
        check_resume_config(tmp_path / "config.yaml", _Recipe(TrainingConfig(seed=1)))


@dataclass
class _Shapes:
    num_pairs: int = 100
    num_test: int = 540


@dataclass
class _Data:
    shapes: _Shapes = field(default_factory=_Shapes)


@dataclass
class _ShapesRun:
    data: _Data = field(default_factory=_Data)


def test_a_resumed_run_may_evaluate_on_another_held_out_split(tmp_path):
    save_config(_ShapesRun(), tmp_path / "config.yaml")
    assert check_resume_config(tmp_path / "config.yaml", _ShapesRun(_Data(_Shapes(num_test=60)))) == []
    with pytest.raises(ConfigError, match=r"'data.shapes.num_pairs' \(100 -> 50\)"):  # the training data: refused
        check_resume_config(tmp_path / "config.yaml", _ShapesRun(_Data(_Shapes(num_pairs=50))))


@pytest.mark.parametrize(
    "text, got",
    [
        ("", "got nothing (empty, or only comments)"),
        ("# my settings were here\n", "got nothing (empty, or only comments)"),
        ("{}\n", "got nothing (empty, or only comments)"),
        ("tiny settings\n", "got a str 'tiny settings'"),  # was an unknown key 'tiny settings'
        ("- 1\n- 2\n", "got a list [1, 2]"),
    ],
)
def test_a_config_file_without_settings_is_refused(tmp_path, text, got):
    file = write(tmp_path / "run.yaml", text)
    with pytest.raises(ConfigError) as error:  # an empty file gave the defaults (a full-size run) in silence
        load_config(Schema, [f"config={file}"])
    assert str(error.value) == f"config: {file!r} must hold a mapping of sections at the top level, {got}"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("optim:\n  lr: 1\n  lr: 2\n", "found duplicate key lr at line 3, column 3"),
        ("optim:\n  lr: 1\n   bad: 1\n", "mapping values are not allowed in this context at line 3, column 7"),
        ("5\n", "Invalid loaded object type: int"),  # a top-level scalar: OmegaConf's own check, one line
    ],
)
def test_yaml_errors_in_a_file_are_one_line_with_the_place(tmp_path, text, reason):
    file = write(tmp_path / "run.yaml", text)
    with pytest.raises(ConfigError) as error:
        load_config(Schema, [f"config={file}"])
    assert str(error.value) == f"config: {file!r} is not valid YAML ({reason})"


@dataclass
class _Answers:
    labels: Optional[list[str]] = None
    name: str = "vqa"
    shuffle: bool = True


@dataclass
class _Task:
    data: _Answers = field(default_factory=_Answers)


def test_yaml_booleans_where_text_is_taken_are_refused_naming_the_key(tmp_path):
    """YAML reads yes/no/on/off unquoted as booleans and OmegaConf made them the text 'True'/'False': vqa.yaml's
    answers [yes, no] became labels no answer matched (every target zero, the run 'trained' silently)."""
    path = tmp_path / "task.yaml"
    path.write_text("data:\n  labels: [yes, no, '1']\n")
    with pytest.raises(ConfigError) as caught:
        load_config(_Task, [f"config={path}"])
    assert str(caught.value) == (
        f"config file '{path}': key 'data.labels': expected text (quote yes, no, on, off, true and false in YAML: "
        '"yes"), got the boolean True'
    )
    with pytest.raises(
        ConfigError, match=r"^override 'data.name=off': key 'data.name': expected text .*got the boolean False$"
    ):
        load_config(_Task, ["data.name=off"])
    quoted = load_config(_Task, ["data.labels=['yes','no']", "data.name='on'", "data.shuffle=no"])  # a bool takes no
    assert quoted.data.labels == ["yes", "no"] and quoted.data.name == "on" and quoted.data.shuffle is False


def test_how_a_run_saves_memory_may_change_on_resume(tmp_path):
    """Activation checkpointing recomputes the same ops and keep_freed_memory only places freed memory: a
    resume that changes them (a run out of memory resumed with checkpointing on) was refused as a change of
    what it trains."""
    save_config(_Recipe(), tmp_path / "config.yaml")
    for changed in (
        TrainingConfig(activation_checkpointing="selective"),
        TrainingConfig(activation_checkpointing="full", keep_freed_memory=False),
    ):
        assert check_resume_config(tmp_path / "config.yaml", _Recipe(changed)) == []


def test_a_leading_tilde_in_the_run_paths_is_the_home_directory(tmp_path, monkeypatch):
    """A YAML file or a quoted override keeps ``~`` as written: the run wrote into a directory named '~'
    under the working one (its report then read the home directory's export, a traceback after training),
    and a resume of '~/run/checkpoints/step_8' was 'no such directory'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(_Recipe, ["training.output_dir=~/runs/a", "training.resume=~/runs/b/checkpoints/step_8"])
    assert config.training.output_dir == str(tmp_path / "runs" / "a")
    assert config.training.resume == str(tmp_path / "runs" / "b" / "checkpoints" / "step_8")
    file = write(tmp_path / "c.yaml", "training:\n  output_dir: ~/runs/c\n  resume: auto\n")
    config = load_config(_Recipe, [f"config={file}"])
    assert config.training.output_dir == str(tmp_path / "runs" / "c") and config.training.resume == "auto"
    assert load_config(_Recipe, ["training.output_dir=runs/~d"]).training.output_dir == "runs/~d"  # only a leading ~


def test_a_number_other_than_0_or_1_for_a_boolean_is_refused_naming_the_key(tmp_path):
    """OmegaConf reads any nonzero number as true: ``training.compile=2`` compiled the model, silently."""
    with pytest.raises(ConfigError) as error:
        load_config(_Task, ["data.shuffle=2"])
    assert (
        str(error.value) == "override 'data.shuffle=2': key 'data.shuffle': expected a boolean (true or false), got 2"
    )
    with pytest.raises(ConfigError, match=r"^override 'data.shuffle=\"-1\"': key 'data.shuffle': expected a boolean"):
        load_config(_Task, ['data.shuffle="-1"'])
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  shuffle: 7\n")
    with pytest.raises(ConfigError) as error:
        load_config(_Task, [f"config={path}"])
    assert str(error.value) == f"config file '{path}': key 'data.shuffle': expected a boolean (true or false), got 7"
    with pytest.raises(ConfigError, match=r"^override 'training.compile=2': key 'training.compile': expected a bool"):
        load_config(_RecipeTraining, ["training.compile=2"])
    # the YAML spellings, OmegaConf's y/n and 0 and 1 read as before
    for written, read in [("yes", True), ("no", False), ("on", True), ("off", False), ("true", True), ("False", False)]:
        assert load_config(_Task, [f"data.shuffle={written}"]).data.shuffle is read
    for written, read in [("y", True), ("n", False), ("1", True), ("0", False), ('"1"', True)]:
        assert load_config(_Task, [f"data.shuffle={written}"]).data.shuffle is read


@dataclass
class _RecipeTraining:
    training: TrainingConfig = field(default_factory=TrainingConfig)


def test_the_generic_training_defaults_name_no_model_and_each_recipe_its_own_directory():
    """A model composed from the modules and trained with fit(training=TrainingConfig(...)) wrote into runs/flava,
    the FLAVA recipe's directory (a second such run resumed or refused the FLAVA one's)."""
    import importlib.util

    from tests.helpers import REPO
    from torchflava.training.schema import TrainingConfig

    assert TrainingConfig().output_dir == "runs/run"
    directories = {}
    for recipe in ("flava/train", "flava/finetune", "clip/train", "clip/finetune"):
        spec = importlib.util.spec_from_file_location(recipe.replace("/", "_"), REPO / "examples" / f"{recipe}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = next(
            c
            for n, c in vars(module).items()
            if n.endswith("Config") and hasattr(c, "__dataclass_fields__") and "training" in c.__dataclass_fields__
        )
        directories[recipe] = config().training.output_dir
    assert directories == {
        "flava/train": "runs/flava",
        "flava/finetune": "runs/finetune",
        "clip/train": "runs/clip",
        "clip/finetune": "runs/clip-classes",
    }


@dataclass
class Texts:
    name: str = "run"
    labels: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    optim: Optim = field(default_factory=Optim)


def test_text_that_reads_as_an_interpolation_is_recorded_as_it_is_and_a_resume_accepts_it(tmp_path):
    """A config holds its values resolved: a VQA answer "${x}" (vqa.yaml's, read verbatim) was recorded in
    config.yaml as an interpolation, and the resume refused the run's own config ('not readable YAML (Interpolation
    key 'x' not found'); "${" failed saving it (OmegaConf's grammar error, a traceback)."""
    texts = ["${x}", "\\${y}", "a ${oc.env:HOME} b", "${", "C:\\${z}\\", "plain \\ text", "$"]
    config = Texts(name="${run}", labels=texts, files={"val": "/d/${v}.jsonl"})
    saved = tmp_path / "config.yaml"
    save_config(config, saved)
    assert check_resume_config(saved, config) == []
    assert load_config(Texts, [f"config={saved}"]) == config
    assert "plain \\ text" in saved.read_text()  # (text without "${" as it was)
    changed = Texts(name="${run}", labels=texts[:-1] + ["${x}"], files={"val": "/d/${v}.jsonl"})
    with pytest.raises(
        ConfigError, match=r"key 'labels' \(\['\$\{x\}'.* 'plain .* text', '\$\{x\}'\]\): expected the values"
    ):
        check_resume_config(saved, changed)


def test_a_recorded_config_read_with_pyyaml_and_unescaped_holds_the_config_s_text():
    """The commands that read a run's config.yaml with PyYAML (classify's data.label_column, data.text_columns) read
    the escape config_yaml writes before each ${ (a backslash): unescaped gives back what OmegaConf reads."""
    import yaml

    from torchflava.utils.config_text import unescape_interpolations, unescaped

    texts = ["${x}", "\\${y}", "a ${oc.env:HOME} b", "${", "C:\\${z}\\", "plain \\ text", "$", "\\\\\\${w}"]
    config = Texts(name="${run}", labels=texts, files={"val": "/d/${v}.jsonl"})
    read = unescaped(yaml.safe_load(config_yaml(config)))
    assert (read["name"], read["labels"], read["files"]) == ("${run}", texts, {"val": "/d/${v}.jsonl"})
    assert unescape_interpolations("a\\\\${b}") == "a\\\\${b}"  # (an even run is no escape of ours: as it is)
