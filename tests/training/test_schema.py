"""Config checks shared by the recipes: data paths of the right kind, data that cannot be opened as a
one-line config error naming the key, learning-rate multipliers that name the model's modules, the
strategy against the processes launched, and single-process ddp/fsdp groups that need no port."""

import os
from pathlib import Path
import subprocess
import sys

import pytest
import torch
from torch import nn

from torchflava.evaluation.shapes import shapes_prompts_check
from torchflava.training.config import ConfigError
from torchflava.training.schema import (
    OptimConfig,
    TrainingConfig,
    learnt_vocabulary,
    lr_multipliers_check,
    memory_check,
    meta_build_checks,
    norm_eps_check,
    opened,
    pair_file_checks,
    path_check,
    raise_on_failed_checks,
    smallest_vocab,
    training_checks,
)


def test_path_check_wants_the_kind_the_reader_opens(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    assert path_check("k", None, "file") == (True, "k", "", None)  # unset
    assert path_check("k", str(tmp_path / "a.tar"), "file")[0]
    assert path_check("k", str(tmp_path / "dir"), "file") == (False, "k", "an existing file", str(tmp_path / "dir"))
    assert path_check("k", str(tmp_path / "dir"), "directory")[0]
    assert not path_check("k", str(tmp_path / "a.tar"), "directory")[0]
    assert path_check("k", str(tmp_path / "*.tar"), "files")[0]
    assert path_check("k", str(tmp_path / "**" / "a.tar"), "files")[0]
    assert path_check("k", str(tmp_path / "*.zip"), "files") == (
        False,
        "k",
        "a file or a glob matching files",
        str(tmp_path / "*.zip"),
    )
    assert not path_check("k", str(tmp_path / "d*"), "files")[0]  # matches a directory only


def test_opened_turns_a_reader_error_into_one_line_naming_the_key():
    assert opened("data.texts", "t.txt", "a text file", lambda: 5) == 5

    def unreadable():
        raise ValueError("t.txt holds no line\nsecond line")

    with pytest.raises(ConfigError) as caught:
        opened("data.texts", "t.txt", "a text file", unreadable)
    assert str(caught.value) == "key 'data.texts': expected a text file, got 't.txt' (t.txt holds no line)"

    def silent():
        raise FileNotFoundError()

    with pytest.raises(ConfigError, match=r"^key 'k': expected x, got 'p' \(FileNotFoundError\)$"):
        opened("k", "p", "x", silent)
    with pytest.raises(KeyError):  # a bug in the reader is not dressed up as a config error
        opened("k", "p", "x", lambda: {}["missing"])


def _first_failure(checks):
    with pytest.raises(ConfigError) as caught:
        raise_on_failed_checks(checks)
    return str(caught.value)


def test_pair_file_checks(tmp_path):
    (tmp_path / "c.jsonl").write_text("")
    captions, root = str(tmp_path / "c.jsonl"), str(tmp_path)
    raise_on_failed_checks(pair_file_checks("data.files", None, None, None, required=False))
    raise_on_failed_checks(pair_file_checks("data.files", None, root, captions, required=True))
    raise_on_failed_checks(pair_file_checks("data.files", None, None, captions, required=True))  # absolute paths
    assert _first_failure(pair_file_checks("data.files", None, None, None, required=True)) == (
        "key 'data.files': expected pairs_shards, or pairs_captions (with pairs_root when its image paths are "
        "relative), got {'pairs_shards': None, 'pairs_root': None, 'pairs_captions': None}"
    )
    assert _first_failure(pair_file_checks("data.files", None, root, None, required=False)) == (
        "key 'data.files.pairs_captions': expected a captions file listing the images of data.files.pairs_root, "
        "got None"
    )
    assert _first_failure(pair_file_checks("data.files", str(tmp_path / "*.tar"), None, None, required=True)) == (
        f"key 'data.files.pairs_shards': expected a file or a glob matching files, got '{tmp_path / '*.tar'}'"
    )


def test_pair_file_checks_of_the_captions_keys(tmp_path):
    """pairs_split, pairs_image_key and pairs_text_key: for a captions file of the format they apply to."""
    for name in ("c.jsonl", "c.json", "c.csv"):
        (tmp_path / name).write_text("")
    jsonl, karpathy, csv = (str(tmp_path / name) for name in ("c.jsonl", "c.json", "c.csv"))

    def failure(captions, shards=None, **keys):
        return _first_failure(pair_file_checks("data.files", shards, None, captions, required=True, **keys))

    raise_on_failed_checks(pair_file_checks("data.files", None, None, karpathy, required=True, split=["train"]))
    raise_on_failed_checks(
        pair_file_checks("data.files", None, None, csv, required=True, image_key="url", text_key="text")
    )
    assert failure(jsonl, split=["train"]) == (
        f"key 'data.files.pairs_split': expected null for {jsonl} (splits are those of Karpathy's split files, "
        ".json, or of a .parquet file's split column), got ['train']"
    )
    assert failure(karpathy, split=[]) == (
        "key 'data.files.pairs_split': expected null, or a non-empty list of distinct split names like "
        "[train, restval], got []"
    )
    assert failure(karpathy, split=["train", "train"]).startswith("key 'data.files.pairs_split': expected null, or")
    # (keys for a .json: a list of captions names them, Karpathy's and COCO's files are refused as they are read)
    raise_on_failed_checks(pair_file_checks("data.files", None, None, karpathy, required=True, image_key="img"))
    assert failure(csv, text_key="image") == (
        "key 'data.files.pairs_text_key': expected a key other than data.files.pairs_image_key's ('image'), got 'image'"
    )
    assert failure(csv, image_key="") == (
        "key 'data.files.pairs_image_key': expected null, or the key or column of the image paths in "
        "data.files.pairs_captions (a .jsonl, .csv or .tsv, or a .json list of captions), got ''"
    )
    (tmp_path / "c[v2].jsonl").write_text("")  # (a file whose name reads as a glob: that file, not parquet files)
    assert failure(str(tmp_path / "c[v2].jsonl"), split=["train"]).startswith(
        f"key 'data.files.pairs_split': expected null for {tmp_path / 'c[v2].jsonl'} (splits are those of Karpathy's"
    )
    shards = str(tmp_path / "p.tar")
    assert failure(None, shards, split=["train"]) == (
        "key 'data.files.pairs_split': expected null without data.files.pairs_captions, got ['train']"
    )


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.text_encoder, self.head = nn.Linear(4, 4), nn.Linear(4, 2)


def test_lr_multipliers_check_reads_the_models_module_names_before_any_work():
    calls = []

    def build():
        calls.append(torch.empty(1).device.type)  # the builder runs on the meta device
        return _Tower()

    assert lr_multipliers_check(build, OptimConfig()) == (True, "optim.lr_multipliers", "", None)
    assert calls == []  # nothing to check: the model is not even built
    assert lr_multipliers_check(build, OptimConfig(lr_multipliers={"text_encoder": 0.01}))[0]
    assert calls == ["meta"]
    ok, key, expected, got = lr_multipliers_check(build, OptimConfig(lr_multipliers={"text_encoder": 0.1, "vision": 1}))
    assert (ok, key, got) == (False, "optim.lr_multipliers", {"text_encoder": 0.1, "vision": 1})
    assert "(['vision'] name no module with trainable parameters in the model)" in expected
    tower = _Tower()
    tower.head.requires_grad_(False)  # a frozen module has no trainable parameters to scale
    assert not lr_multipliers_check(tower, OptimConfig(lr_multipliers={"head": 0.5}))[0]
    with pytest.raises(ConfigError, match=r"^key 'optim.lr_multipliers': expected .*, got \{'head': -1\}$"):
        raise_on_failed_checks([lr_multipliers_check(tower, OptimConfig(lr_multipliers={"head": -1}))])

    def broken():
        raise ValueError("model.embed_dim must be > 0")

    # a model section that does not build is that section's fault, reported by its own check
    assert lr_multipliers_check(broken, OptimConfig(lr_multipliers={"head": 0.5}))[0]


def test_memory_check_refuses_parameters_past_the_machines_memory_without_allocating(monkeypatch):
    monkeypatch.setattr("torchflava.training.schema.host_memory_bytes", lambda: 2**30)  # 1 GiB
    assert memory_check("model", lambda: nn.Linear(1024, 1024))[0]
    # 2^28 + 2^14 float32 weights: 1.0 GiB and a little more (built on the meta device: nothing allocated)
    ok, key, expected, got = memory_check("model", lambda: nn.Linear(2**14, 2**14))
    assert (ok, key, got) == (False, "model", "268,451,840 parameters (1.0 GiB)")
    assert expected == "sizes whose parameters fit in this machine's memory (1.0 GiB)"
    huge = lambda: nn.Linear(10**6, 10**6)  # noqa: E731  (4 TB: an allocator's error unless on meta)
    assert not memory_check("model", huge)[0]

    def missing():
        raise FileNotFoundError("checkpoint not found: /nowhere")

    assert memory_check("model", missing)[0]  # its fault is the builder's, said by meta_build_checks:
    assert meta_build_checks("pretraining", missing)[0] == (
        False,
        "pretraining",
        "arguments its builder accepts",
        "checkpoint not found: /nowhere",
    )


@pytest.mark.parametrize("threads", [0, 10**12])
def test_a_thread_count_torch_cannot_take_is_a_config_error_naming_the_key(threads, tmp_path):
    t = TrainingConfig(output_dir=str(tmp_path / "run"), threads=threads, max_steps=10)
    with pytest.raises(
        ConfigError, match=rf"^key 'training.threads': expected null or in \[1, \d+\] .*, got {threads}$"
    ):
        raise_on_failed_checks(training_checks(t, OptimConfig(warmup_steps=1), 1))


def test_several_processes_with_strategy_none_are_a_config_error_naming_the_key(tmp_path):
    t = TrainingConfig(output_dir=str(tmp_path / "run"), strategy="none", global_batch_size=8)
    with pytest.raises(ConfigError, match=r"key 'training.strategy': expected ddp or fsdp for the 2 processes"):
        raise_on_failed_checks(training_checks(t, OptimConfig(), world_size=2))
    raise_on_failed_checks(training_checks(t, OptimConfig(), world_size=1))
    for strategy in ("ddp", "fsdp"):
        t.strategy = strategy
        raise_on_failed_checks(training_checks(t, OptimConfig(), world_size=2))


COLLECTIVE_TIMEOUT_EXPECTED = (
    "key 'training.collective_timeout_s': expected null or a number of seconds in [1, 1,000,000,000] (ranks wait for "
    "each other's steps and checkpoint writes: a shorter timeout fails a healthy run; at most about 31 years)"
)


# (1e-9 and 0.5 were accepted: a run that failed at its first collective)
@pytest.mark.parametrize("seconds", [0, -5.0, float("nan"), float("inf"), 1e-9, 0.5])
def test_a_collective_timeout_under_a_second_is_a_config_error_naming_the_key(tmp_path, seconds):
    t = TrainingConfig(output_dir=str(tmp_path / "run"), global_batch_size=8, collective_timeout_s=seconds)
    with pytest.raises(ConfigError) as info:
        raise_on_failed_checks(training_checks(t, OptimConfig(), world_size=1))
    assert str(info.value) == f"{COLLECTIVE_TIMEOUT_EXPECTED}, got {seconds!r}"
    for fine in (None, 1, 1.0, 600):
        t.collective_timeout_s = fine
        raise_on_failed_checks(training_checks(t, OptimConfig(), world_size=1))


def test_a_collective_timeout_past_a_timedelta_is_a_config_error_naming_the_key(tmp_path):
    """10^14 seconds passed the check, then was an OverflowError traceback where the process group took it."""
    t = TrainingConfig(output_dir=str(tmp_path / "run"), global_batch_size=8, collective_timeout_s=1e14)
    with pytest.raises(ConfigError) as info:
        raise_on_failed_checks(training_checks(t, OptimConfig(), world_size=1))
    assert str(info.value) == f"{COLLECTIVE_TIMEOUT_EXPECTED}, got 100000000000000.0"
    t.collective_timeout_s = 1e9
    raise_on_failed_checks(training_checks(t, OptimConfig(), world_size=1))


@pytest.mark.parametrize("eps", [1e12, 0.5, 0.0, -1e-8, float("nan"), float("inf")])
def test_an_adamw_eps_outside_0_to_a_hundredth_is_a_config_error_naming_the_key(tmp_path, eps):
    """optim.eps=1e12 was accepted: every update was the gradients' average over 10^12, and the run trained nothing."""
    t = TrainingConfig(output_dir=str(tmp_path / "run"), global_batch_size=8)
    with pytest.raises(ConfigError) as info:
        raise_on_failed_checks(training_checks(t, OptimConfig(eps=eps), world_size=1))
    assert str(info.value) == (
        "key 'optim.eps': expected a number in (0, 0.01] (AdamW divides each update by the gradients' root mean "
        f"square plus eps: an eps far above that scales the result to about 0), got {eps!r}"
    )
    for fine in (1e-8, 1e-6, 1e-2):
        raise_on_failed_checks(training_checks(t, OptimConfig(eps=fine), world_size=1))


def test_a_layer_norm_eps_outside_0_to_a_hundredth_is_refused_naming_the_key():
    """model.norm_eps (and FLAVA's pretraining.head_norm_eps) of 1e12 were accepted: every LayerNorm's output was
    about 0 (its input over 10^6)."""
    for bad in (1e12, 0.5, 0.0, float("nan")):
        assert norm_eps_check("model.norm_eps", bad) == (
            False,
            "model.norm_eps",
            "a number in (0, 0.01] (a LayerNorm divides by the square root of its input's variance plus eps: an eps "
            "far above that scales the result to about 0)",
            bad,
        )
    for fine in (None, 1e-12, 1e-5, 1e-2):
        assert norm_eps_check("pretraining.head_norm_eps", fine)[0]


def test_an_lr_multiplier_past_one_over_lr_times_weight_decay_is_a_config_error_naming_the_key(tmp_path):
    """AdamW multiplies a group's weights by 1 - lr x factor x weight_decay a step: a factor of 10^12 zeroed or
    flipped them (a non-finite loss after the first steps), where lr x weight_decay alone was checked."""
    t = TrainingConfig(output_dir=str(tmp_path / "run"), global_batch_size=8, max_steps=10)
    o = OptimConfig(lr=1e-3, weight_decay=0.01, warmup_steps=0, lr_multipliers={"text_encoder": 1e5, "head": 2.0})
    with pytest.raises(ConfigError) as info:
        raise_on_failed_checks(training_checks(t, o, world_size=1))
    assert str(info.value) == (
        "key 'optim.lr_multipliers': expected factors below 1 / (optim.lr x optim.weight_decay) (100000): AdamW "
        "multiplies the weights of a factor's modules by 1 - lr x factor x weight_decay each step, which zeroed or "
        "flipped them (a non-finite loss), got {'text_encoder': 100000.0, 'head': 2.0}"
    )
    for fine in ({"text_encoder": 99_999.0}, {"text_encoder": 0.0}):
        o_fine = OptimConfig(lr=1e-3, weight_decay=0.01, warmup_steps=0, lr_multipliers=fine)
        raise_on_failed_checks(training_checks(t, o_fine, world_size=1))
    # without weight decay nothing is multiplied: any factor passes here
    o.weight_decay = 0.0
    raise_on_failed_checks(training_checks(t, o, world_size=1))


@pytest.mark.parametrize("lr, weight_decay", [(0.5, 2.0), (0.25, 4.0)])
def test_the_base_rate_and_each_multiplier_meet_one_decay_bound(tmp_path, lr, weight_decay):
    """optim.weight_decay (the base rate's factor, 1) and optim.lr_multipliers share one rule: lr x factor x
    weight_decay < 1. At lr x weight_decay = 1 the first is refused; below it, a factor is refused at the bound."""
    t = TrainingConfig(output_dir=str(tmp_path / "run"), global_batch_size=8, max_steps=10)
    at_one = OptimConfig(lr=lr, weight_decay=weight_decay, warmup_steps=0)
    with pytest.raises(ConfigError, match=r"^key 'optim.weight_decay': expected less than 1 / optim.lr "):
        raise_on_failed_checks(training_checks(t, at_one, world_size=1))
    below = OptimConfig(lr=lr, weight_decay=weight_decay / 2, warmup_steps=0, lr_multipliers={"head": 1.999})
    raise_on_failed_checks(training_checks(t, below, world_size=1))  # (bound 2)
    below.lr_multipliers = {"head": 2.0}
    with pytest.raises(ConfigError, match=r"^key 'optim.lr_multipliers': expected factors below .* \(2\): "):
        raise_on_failed_checks(training_checks(t, below, world_size=1))
    # a product that underflows to 0 decays nothing: any factor passes (the bound was a ZeroDivisionError)
    tiny = OptimConfig(lr=1e-200, weight_decay=1e-200, warmup_steps=0, lr_multipliers={"head": 1e12})
    raise_on_failed_checks(training_checks(t, tiny, world_size=1))


def _first_letters(texts, *, max_length):
    """A tokenizer of one id per character, cut to ``max_length`` ids (a start id and an end id among them)."""
    rows = [[1, *(ord(c) for c in text)][: max_length - 1] + [2] for text in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, (ids != 0).long()


def test_shapes_prompts_check_names_the_length_at_which_the_classes_read_apart():
    """The shapes world's class names (colours red, green, ... of circle, cross, square, ...) under the template
    'a {}': cut to 4 ids, 'a red circle' and 'a red square' read alike; the colours differ at their first
    letter, and 'circle' and 'cross' at the 11th character of 'a purple circle' (13 ids with the start and end
    ones)."""
    ok, key, expected, got = shapes_prompts_check(_first_letters, ["a {}"], 4, evaluated=True)
    assert (ok, key, got) == (False, "data.max_text_length", 4)
    assert expected.startswith("at least 13, where the tokenizer keeps the zero-shot prompts of the held-out shapes")
    assert shapes_prompts_check(_first_letters, ["a {}"], 13, evaluated=True)[0]
    assert not shapes_prompts_check(_first_letters, ["a {}"], 12, evaluated=True)[0]
    assert shapes_prompts_check(_first_letters, ["a {}"], 4, evaluated=False)[0]  # no evaluation: nothing to read

    def unknown_words(texts, *, max_length):  # every word the same unknown id: no length tells them apart
        return _first_letters(["x" * len(t.split()) for t in texts], max_length=max_length)

    ok, key, expected, got = shapes_prompts_check(unknown_words, ["a {}"], 32, evaluated=True)
    assert (ok, key, got) == (False, "eval.enabled", True)
    assert expected.startswith("false: the run's tokenizer reads the zero-shot prompts of two held-out shapes classes")


def test_single_process_runs_with_ddp_take_no_port_two_can_run_at_once(tmp_path):
    """Without torchrun, ddp/fsdp start their one-process group on an in-process store: two such runs on
    one machine do not collide on a TCP port (a fixed one made the second fail with EADDRINUSE)."""
    script = (
        "import sys, time, torch.distributed as dist\n"
        "from torchflava.training.distributed import init_distributed\n"
        "info = init_distributed('ddp', device='cpu')\n"
        "assert dist.get_world_size() == 1 and info.rank == 0\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(4)\n"
        "dist.destroy_process_group()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"up{i}")], env=env, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    errors = [run.communicate(timeout=120)[1].decode() for run in runs]  # reads and closes each pipe
    results = [(run.returncode, error) for run, error in zip(runs, errors)]
    assert [code for code, _ in results] == [0, 0], results
    assert (tmp_path / "up0").exists() and (tmp_path / "up1").exists()


def test_opened_keeps_the_rank_that_raised_an_error_shared_with_every_rank():
    """A reader run by rank 0 alone (``rank0_value``) whose error every rank raises: the ConfigError ``opened``
    makes of it keeps the mark, so that the recipe prints it on that rank alone (each rank printed it)."""
    from torchflava.training.distributed import raised_on_rank

    shared, local = ValueError("no vocab"), ValueError("no vocab")
    shared._raised_on_rank = 0

    def reader(error):
        def read():
            raise error

        return read

    with pytest.raises(ConfigError, match=r"^key 'data.vocab': expected a vocabulary, got 'v.txt' \(no vocab\)$") as a:
        opened("data.vocab", "v.txt", "a vocabulary", reader(shared))
    with pytest.raises(ConfigError) as b:
        opened("data.vocab", "v.txt", "a vocabulary", reader(local))
    assert raised_on_rank(a.value) == 0 and raised_on_rank(b.value) is None


def _counted(build, calls: list, name: str):
    """``build`` that records ``name`` in ``calls`` each time it is called."""

    def counted():
        calls.append(name)
        return build()

    return counted


def test_meta_build_checks_builds_a_section_once_for_both_its_checks(monkeypatch):
    """A section's builder faults and its memory are told from one meta build; the smallest vocabulary's build
    is made only where the section's own does not fit (each was built for its check: twice at every start)."""
    monkeypatch.setattr("torchflava.training.schema.host_memory_bytes", lambda: 2**30)  # 1 GiB
    calls = []
    fits = meta_build_checks(
        "model",
        _counted(lambda: nn.Linear(1024, 1024), calls, "build"),
        smallest=_counted(lambda: nn.Linear(16, 16), calls, "smallest"),
    )
    assert (fits[0], fits[1][0], fits[1][3], calls) == (
        (True, "model", "", None),
        True,
        "1,049,600 parameters (0.0 GiB)",
        ["build"],
    )
    # past memory (a vocabulary of 2^15 rows): the smallest vocabulary's is counted in its place, and fits
    calls.clear()
    large = _counted(lambda: nn.Embedding(2**15, 2**14), calls, "build")
    _, fits = meta_build_checks("model", large, smallest=_counted(lambda: nn.Embedding(16, 2**14), calls, "smallest"))
    assert (fits[0], fits[3], calls) == (True, "262,144 parameters (0.0 GiB)", ["build", "smallest"])
    _, fits = meta_build_checks("model", lambda: nn.Embedding(2**15, 2**14))  # (no smallest: refused)
    assert fits == (
        False,
        "model",
        "sizes whose parameters fit in this machine's memory (1.0 GiB)",
        "536,870,912 parameters (2.0 GiB)",
    )


def test_meta_build_checks_counts_the_sections_build_where_the_smallest_vocabulary_does_not_build(monkeypatch):
    """A smallest vocabulary the builder refuses (an id past it: FLAVA's model.pad_token_id=20 at 16 ids) leaves
    the section's own count: the memory check passed such a build, and model.projection_dim=10^12 with
    model.pad_token_id=20 went on to an allocator's traceback."""
    monkeypatch.setattr("torchflava.training.schema.host_memory_bytes", lambda: 2**30)

    def refused():
        raise ValueError("pad_token_id must be an int id below vocab_size = 16, got 20")

    faults, fits = meta_build_checks("model", lambda: nn.Embedding(2**15, 2**14), smallest=refused)
    assert faults == (True, "model", "", None)
    assert fits[:2] == (False, "model") and fits[3] == "536,870,912 parameters (2.0 GiB)"


REPO = Path(__file__).resolve().parents[2]
RECIPE_CONFIGS = {
    "flava": REPO / "examples" / "flava" / "configs" / "pretraining" / "debug.yaml",
    "clip": REPO / "examples" / "clip" / "configs" / "debug.yaml",
}


def _validated(recipe: str, overrides: list, tmp_path: Path, calls: list) -> None:
    """The recipe's validate on its debug config and ``overrides``, recording in ``calls`` each model
    built (by vocabulary size) and, for FLAVA, each set of pretraining heads (``"heads"``)."""
    from tests.helpers import load_recipe
    from torchflava.training.config import load_config

    module = load_recipe(f"examples/{recipe}/train.py", f"meta_builds_{recipe}")
    builder = f"{recipe}_model"
    real = getattr(module, builder)
    setattr(module, builder, lambda **kwargs: calls.append(kwargs["vocab_size"]) or real(**kwargs))
    if recipe == "flava":
        heads = module.flava_model_for_pretraining
        module.flava_model_for_pretraining = lambda **kwargs: calls.append("heads") or heads(**kwargs)
    arguments = [f"config={RECIPE_CONFIGS[recipe]}", *overrides, f"training.output_dir={tmp_path / 'run'}"]
    module.validate(load_config(module.TrainConfig, arguments), 1)


@pytest.mark.parametrize(
    "recipe, overrides, built",
    [
        ("flava", [], [200, "heads"]),  # was [200, "heads", 16, 16, "heads"]: both sections built again
        ("clip", [], [120]),  # was [120, 16]
        # (a vocabulary past memory, not refused: the learnt one holds what the data gives, at most data.vocab_size)
        ("flava", ["data.vocab_size=1000000000000"], [10**12, 16, "heads", "heads"]),
        ("clip", ["data.vocab_size=1000000000000"], [10**12, 16]),
    ],
)
def test_the_recipes_build_each_model_section_once_for_its_checks(recipe, overrides, built, tmp_path):
    """validate builds each model section once on the meta device for its builder's faults and its memory,
    and the smallest vocabulary's only where data.vocab_size's does not fit."""
    calls = []
    _validated(recipe, overrides, tmp_path, calls)
    assert calls == built


def test_flava_refuses_a_model_past_memory_whose_pad_token_id_the_smallest_vocabulary_lacks(tmp_path):
    """model.pad_token_id=20 left the memory check's 16-id build refused by the builder, and the check passed:
    model.projection_dim=10^12 went on to the run."""
    with pytest.raises(
        ConfigError, match=r"^key 'model': expected sizes whose parameters fit in this machine's memory"
    ):
        _validated("flava", ["model.pad_token_id=20", "model.projection_dim=1000000000000"], tmp_path, [])


def test_a_vocabulary_the_data_will_shrink_is_not_refused_for_a_pad_token_id_past_16(tmp_path):
    """data.vocab_size=10^12 with model.pad_token_id=20: the memory check's smallest build, at 16 ids, was refused
    by the builder (the pad id past it), the section was counted at 10^12 ids and the run refused; the smallest
    vocabulary is now one above the pad id."""
    calls = []
    _validated("flava", ["data.vocab_size=1000000000000", "model.pad_token_id=20"], tmp_path, calls)
    assert calls == [10**12, 21, "heads", "heads"]
    assert [smallest_vocab(), smallest_vocab(3), smallest_vocab(20, None, -1, "7", 40.0)] == [16, 16, 21]


def test_a_grad_accumulation_no_step_can_hold_names_that_key_not_max_steps(tmp_path):
    """10^12 micro-batches a step was blamed on training.max_steps (the product of the two past its bound)."""
    t = TrainingConfig(output_dir=str(tmp_path / "run"), max_steps=8, global_batch_size=8, grad_accumulation=10**12)
    with pytest.raises(ConfigError) as error:
        raise_on_failed_checks(training_checks(t, OptimConfig(warmup_steps=1), 1))
    assert str(error.value) == (
        "key 'training.grad_accumulation': expected in [1, 16,777,216] (a micro-batch holds an example; a step at "
        "most 16,777,216), got 1000000000000"
    )
    t = TrainingConfig(
        output_dir=str(tmp_path / "run"), max_steps=10**6, global_batch_size=1000, grad_accumulation=1000
    )
    with pytest.raises(ConfigError, match=r"^key 'training.max_steps': expected at most 100,000,000 micro-batches"):
        raise_on_failed_checks(training_checks(t, OptimConfig(warmup_steps=1), 1))


def test_a_builder_error_naming_one_argument_names_its_key():
    """A section's builder error was the section's key ('pretraining' for pretraining.pretrained=bogus)."""

    def failing(message):
        def build():
            raise ValueError(message)

        return build

    arguments = {"pretrained": "bogus", "embed_dim": 32, "num_heads": 5, "num_layers": 2, "activation": "gelu"}
    for message, key in [
        ("checkpoint not found: bogus", "pretraining.pretrained"),  # its value
        ("flava_model: embed_dim must be >= 1, got -32", "pretraining.embed_dim"),  # its name
        ("embed_dim must be a multiple of num_heads = 5, got 32", "pretraining"),  # two: either may be at fault
        ("transformer_encoder: layers must be >= 1, got 0", "pretraining"),  # none
        ("bogus_dir/embed_dim.txt is missing", "pretraining"),  # neither a word nor the whole value
        ("activation must be one of ('gelu', 'relu'), got 'gelu2'", "pretraining.activation"),  # name and value: one
    ]:
        checks = meta_build_checks("pretraining", failing(message), arguments=arguments)
        assert checks[0] == (False, key, "arguments its builder accepts", message), message
    assert meta_build_checks("model", failing("embed_dim must be >= 1"))[0][1] == "model"  # no arguments given


def test_a_vocabulary_size_too_small_for_the_text_names_data_vocab_size():
    from torchflava.data.tokenizer import WordPieceTokenizer

    with pytest.raises(ConfigError) as error:
        learnt_vocabulary(lambda: WordPieceTokenizer.train(["a red square", "a blue circle"], vocab_size=16))
    assert str(error.value) == (  # a, b, c, d, e, i, l, q, r, s, u
        "key 'data.vocab_size': expected at least 27 for this text (5 special tokens and its 11 characters, each also "
        "as a ## continuation), got 16"
    )

    def no_text():
        raise ValueError("vocab: none given and the data holds no text to learn a vocabulary from")

    with pytest.raises(ValueError, match="^vocab: none given") as error:  # another fault: left to data.vocab's key
        learnt_vocabulary(no_text)
    assert not isinstance(error.value, ConfigError)
