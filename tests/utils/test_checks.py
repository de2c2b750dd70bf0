"""Shared argument checks: what they accept, and the one-line errors naming the argument."""

import pytest
import torch

from torchflava.utils.checks import (
    check_architecture,
    check_bool,
    check_bools,
    check_entries,
    check_input_dtype,
    hf_sub_configs,
    shared_values,
    unsupported_settings,
)


def test_check_bool_takes_bools_only():
    assert check_bool("flag", True) is True and check_bool("flag", False) is False
    # a string "false" is truthy: taken as it is, it would switch the option on
    for value, shown in (("false", "str 'false'"), (0, "int 0"), (1.0, "float 1.0"), (None, "NoneType None")):
        with pytest.raises(TypeError, match=f"^flag must be a bool, got {shown}$"):
            check_bool("flag", value)


def test_check_architecture_checks_bools_naming_the_builder_and_source():
    args = dict(width=8, causal=True)
    check_architecture("builder", args, sizes=["width"], bools=["causal"])
    with pytest.raises(TypeError, match=r"^builder: causal \(from cfg.json\) must be a bool, got str 'no'$"):
        check_architecture(
            "builder", dict(args, causal="no"), sizes=["width"], bools=["causal"], source={"causal": "cfg.json"}
        )


def test_check_architecture_refuses_names_it_does_not_know_naming_their_source():
    check_architecture("builder", dict(width=8), sizes=["width"], known=["width", "depth"])
    with pytest.raises(ValueError, match=r"^builder: expected only its arguments, got \['widht'\] \(from cfg.json\)$"):
        check_architecture(
            "builder", dict(width=8, widht=8), sizes=["width"], known=["width"], source={"widht": "cfg.json"}
        )


def test_check_dropout_takes_probabilities_below_one():
    from torchflava.utils.checks import check_dropout

    assert check_dropout("p", 0) == 0.0 and check_dropout("p", 0.5) == 0.5
    for value in (1, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"^p must be in \[0, 1\), got"):
            check_dropout("p", value)
    with pytest.raises(TypeError, match="^p must be a float, got str$"):
        check_dropout("p", "0.1")


def test_is_integer_tensor_and_describe_tensor():
    import torch

    from torchflava.utils.checks import describe_tensor, is_integer_tensor

    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        assert is_integer_tensor(torch.zeros(2, dtype=dtype))
    for value in (
        torch.zeros(2, dtype=torch.bool),
        torch.zeros(2),
        torch.zeros(2).half(),
        torch.zeros(2, dtype=torch.complex64),
        [0, 1],
        3,
    ):
        assert not is_integer_tensor(value)
    assert describe_tensor(torch.zeros(2, 3, dtype=torch.int32)) == "torch.int32 of shape (2, 3)"
    assert describe_tensor(torch.tensor(1.0)) == "torch.float32 of shape ()"
    assert describe_tensor([1.0]) == "list"


def test_check_entries_compares_the_entries_that_hold_data():
    expected = dict(size=224, length=77)
    check_entries({"size": torch.tensor(224), "w": torch.zeros(3)}, expected, "f.pt")  # absent: not checked
    check_entries({"size": torch.empty((), device="meta"), "length": torch.tensor([77])}, expected, "f.pt")
    with pytest.raises(ValueError, match=r"^f.pt: expected size 224 \(the model's\), got 336$"):
        check_entries({"size": torch.tensor(336)}, expected, "f.pt")
    with pytest.raises(ValueError, match=r"^f.pt: expected length 77 \(the model's\), got a tensor of shape \[2\]$"):
        check_entries({"length": torch.tensor([77, 77])}, expected, "f.pt")


def test_hf_sub_configs_take_a_legacy_dict_whole():
    config = {"text_config": {"a": 1, "b": 2}, "text_config_dict": {"a": 3}, "vision_config": None}
    assert hf_sub_configs(config, ["text_config", "vision_config", "other_config"]) == [{"a": 3}, {}, {}]
    with pytest.raises(ValueError, match="^config.json vision_config_dict must be an object, got list$"):
        hf_sub_configs({"vision_config_dict": []}, ["vision_config"], "config.json")


def test_shared_values_must_agree_between_sections():
    parts = dict(a={"eps": 1e-5}, b={"eps": 1e-5, "act": "gelu"})
    assert shared_values(parts, dict(eps=1e-6, act="gelu"), "cfg") == {"eps": 1e-5, "act": "gelu"}
    with pytest.raises(
        ValueError, match=r"^cfg: expected one eps, act for a and b, got \(a, b\) \{'act': \['quick', 'gelu'\]\}$"
    ):
        shared_values(parts, dict(eps=1e-6, act="quick"), "cfg")


def test_unsupported_settings_are_those_neither_read_nor_off_nor_as_built():
    config = {"width": 8, "ls": 0.1, "off": None, "no": False, "pool": "tok", "sub": {"pool": "avg", "layers": 2}}
    assert unsupported_settings(config, ["sub"], ["width", "layers"], {"pool": "tok"}) == {"ls": 0.1, "sub.pool": "avg"}
    assert unsupported_settings(config, ["sub"], ["width", "layers", "ls"], {"pool": "tok", "sub.pool": "avg"}) == {}


def test_check_bools_names_the_first_flag_that_is_not_a_bool():
    check_bools(a=True, b=False)
    with pytest.raises(TypeError, match=r"^b must be a bool, got str 'no'$"):
        check_bools(a=True, b="no")


def test_check_input_dtype_lets_autocast_cast_fp32_parameters_only():
    fp32, bf16 = torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)
    check_input_dtype(fp32, None)  # no parameters: any input
    with pytest.raises(TypeError, match=r"^x must be torch.float32, the dtype .* got torch.bfloat16$"):
        check_input_dtype(bf16, fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_input_dtype(bf16, fp32)  # autocast casts the fp32 parameters
        with pytest.raises(TypeError, match=r"^states must be torch.bfloat16, .* got torch.float32$"):
            check_input_dtype(fp32, bf16, "states")  # (the CPU's norms over bf16 parameters refuse fp32)
    with pytest.raises(ValueError, match=r"^x must be on the layer's device cpu, got meta$"):
        check_input_dtype(fp32.to("meta"), fp32)


def test_require_reads_values_but_not_on_the_meta_device():
    """A meta-device dry run (a model built and run under ``torch.device("meta")``) has no values: a check
    of them failed inside torch ("Tensor.item() cannot be called on meta tensors"); it passes now, and
    reads real tensors as before."""
    from torchflava.utils.checks import require

    require(torch.tensor(False, device="meta"), lambda: "never built", "never built")
    require(torch.tensor(True), lambda: "never built", "never built")
    with pytest.raises(ValueError, match=r"^x must be positive, got -1$"):
        require(torch.tensor(-1) > 0, lambda: "x must be positive, got -1", "x must be positive")


def test_usable_cores_counts_this_process_affinity_else_the_machine(monkeypatch):
    """One count of the cores for every bound that depends on it (data.num_workers, training.threads)."""
    import os

    from torchflava.data import streaming
    from torchflava.training import schema
    from torchflava.utils.checks import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))
    assert streaming.USABLE_CORES == usable_cores() and streaming.MAX_NUM_WORKERS == max(32, 4 * usable_cores())
    assert schema.MAX_THREADS == max(1024, usable_cores())
    monkeypatch.delattr(os, "sched_getaffinity")  # (not on every OS)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert usable_cores() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # (the machine's count unknown)
    assert usable_cores() == 1
