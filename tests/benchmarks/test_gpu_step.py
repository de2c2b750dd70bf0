"""benchmarks/gpu_step.py in its CPU smoke mode (--device cpu --tiny): the figures it derives, its FLOP
counts against an analytic count and against what activation checkpointing recomputes, its JSON, and
its argument errors."""

import functools
import importlib
import json
from pathlib import Path
import re
import statistics
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from torchflava.utils import memory

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
BATCH = 2  # pretrain_step.make_batches: real text lengths 52 and 35, ITM labels 1, 1
# (compile+selective, a combination like fsdp+selective, left out: a compiled config traces the model for seconds)
CONFIGS = "eager,selective,full,fsdp+selective,compile"


@pytest.fixture(scope="module")
def scripts():
    """The benchmark scripts as modules (they import each other by file name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("gpu_step"), importlib.import_module("vit_tower")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def gpu_step(scripts):
    return scripts[0]


@pytest.fixture(scope="module")
def run(gpu_step, tmp_path_factory):
    """One smoke run of every kind of config and of the encoders. Compiling uses dynamo's ``eager``
    backend: the script's compile path is traced in seconds, where inductor takes minutes on 2 cores."""
    path = tmp_path_factory.mktemp("gpu_step") / "figures.json"
    argv = ["--device", "cpu", "--tiny", "--batch", str(BATCH), "--steps", "1", "--warmup", "0"]
    argv += ["--configs", CONFIGS, "--encoder-batch", "2", "--encoder-modes", "eager,compile"]
    argv += ["--gemm-size", "64", "--gemm-inner", "1"]  # (bf16 matmuls are slow on CPUs without bf16 kernels)
    argv += ["--json", str(path)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
        results = gpu_step.main(argv)
    torch._dynamo.reset()
    return results, path


def rows(results: dict) -> dict:
    return {row["name"]: row for row in results["configs"]}


def test_every_config_and_encoder_ran(run):
    results, _ = run
    assert list(rows(results)) == CONFIGS.split(",")  # the compiled ones last, as listed here
    assert [row.get("error") for row in results["configs"] + results["encoders"]] == [None] * (
        len(CONFIGS.split(",")) + 8
    )
    compiled = rows(results)["compile"]
    assert compiled["compiled_graphs"] > 0 and compiled["graph_breaks"] == 0
    encoders = [(row["model"], row["modality"], row["mode"]) for row in results["encoders"]]
    order = [(m, x, c) for c in ("eager", "compile") for m in ("flava", "clip_vit_b16") for x in ("image", "text")]
    assert encoders == order  # the eager ones first


def test_rates_follow_from_the_step_times(run):
    results, _ = run
    tokens = results["tokens_per_step"]
    assert tokens == {"image_patches": BATCH * 196, "text_tokens": 52 + 35, "total": BATCH * 196 + 87}
    flops, gemm = results["model_flops_per_step"], results["gemm"]["tflops"]
    assert gemm > 0 and results["peak_tflops"] is None  # no datasheet peak for a CPU
    for row in results["configs"]:
        assert len(row["step_times_s"]) == 1 and all(t > 0 for t in row["step_times_s"])
        median = statistics.median(row["step_times_s"])
        assert row["median_step_s"] == median
        assert row["samples_per_s"] == pytest.approx(BATCH / median)
        assert row["tokens_per_s"] == pytest.approx(tokens["total"] / median)
        assert row["achieved_tflops"] == pytest.approx(flops / median / 1e12)
        assert row["executed_tflops"] == pytest.approx(row["executed_flops"] / median / 1e12)
        assert row["mfu"] is None and row["mfu_vs_measured_gemm"] == pytest.approx(row["achieved_tflops"] / gemm)
        assert row["peak_memory_gib"] is None  # measured on CUDA only
    for row in results["encoders"]:
        assert row["items_per_s"] == pytest.approx(2 / row["median_s"])


def test_model_flops_are_flop_counter_modes_and_analytic_for_the_image_tower(run, scripts):
    gpu_step, vit_tower = scripts
    results, _ = run
    data = gpu_step.make_batches(0, batch=BATCH)
    model = gpu_step.build_pretraining(tiny=True, seed=0)
    with FlopCounterMode(display=False, custom_mapping=gpu_step.CPU_ATTENTION_FLOPS) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = gpu_step.loss_fn("ours", model, "pair", data)()
        loss.backward()
    assert results["model_flops_per_step"] == counter.get_total_flops() > 0
    # A GEMM-dominated piece: the image encoder's forward (every position, every layer) is the ViT's analytic count.
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=gpu_step.CPU_ATTENTION_FLOPS) as counter:
        model.model.image_encoder(data["image"], return_pooled=False)
    tiny = gpu_step.TINY_FLAVA
    vit = vit_tower.vit_forward_flops(224, 16, tiny["image_embed_dim"], tiny["image_num_layers"], tiny["image_mlp_dim"])
    assert counter.get_total_flops() == BATCH * vit["total"]


def test_checkpointing_recomputes_the_layers_forward_but_their_last_matmul(run, gpu_step):
    results, _ = run
    model_flops, executed = results["model_flops_per_step"], {n: r["executed_flops"] for n, r in rows(results).items()}
    data = gpu_step.make_batches(0, batch=BATCH)
    model = gpu_step.build_pretraining(tiny=True, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16), gpu_step.flop_counter() as counter:
        gpu_step.loss_fn("ours", model, "pair", data)()  # forward only
    flops = counter.get_flop_counts()
    # No checkpointing, FSDP and compiled blocks (counted before compiling) do the model's FLOPs.
    assert executed["eager"] == executed["compile"] == model_flops
    # Selective checkpointing recomputes norms, GELU, adds (work no FLOP is counted for) and, on the CPU in
    # bf16, the matmul attention's fp32 scores (q k^T, its baddbmm; the other batched product, with v, is a
    # bmm: kept, the scores would be the largest tensor of a layer): nothing else.
    scores = flops["Global"].get(torch.ops.aten.baddbmm, 0)
    assert scores == flops["Global"].get(torch.ops.aten.bmm, 0)  # q k^T and p v: the same FLOPs
    assert scores > 0
    assert executed["selective"] == executed["fsdp+selective"] == model_flops + scores
    # Full checkpointing recomputes each layer's forward in backward, but stops (non-reentrant checkpoint's early
    # stop) once it has what backward needs: the layer's last matmul, the MLP's fc2, is not run again; except
    # in the image and text encoders' last layers, given a mask of the positions the losses read (the
    # pair's masked pass every one, its unmasked pass the CLS), whose rows are scattered after fc2.
    counts = {name: sum(ops.values()) for name, ops in flops.items()}
    layers = sum(n for name, n in counts.items() if re.search(r"\.layers\.\d+$", name))
    last_matmuls = sum(n for name, n in counts.items() if re.search(r"\.layers\.\d+\.mlp\.fc2$", name))
    scattered = 0
    for stack in ("image_encoder", "text_encoder"):
        fc2 = {
            int(m.group(1)): n
            for name, n in counts.items()
            if (m := re.search(rf"{stack}\.encoder\.layers\.(\d+)\.mlp\.fc2$", name))
        }
        scattered += fc2[max(fc2)]
    assert 0 < scattered < last_matmuls < layers
    assert executed["full"] - model_flops == layers - last_matmuls + scattered


def test_json_holds_every_figure(run):
    results, path = run
    assert json.loads(path.read_text()) == results
    for key in ("device", "device_type", "torch", "cuda", "date", "gemm", "peak_tflops", "peak_source", "wall_s"):
        assert key in results
    assert results["device_type"] == "cpu" and results["torch"] == torch.__version__
    step_keys = {"median_step_s", "samples_per_s", "tokens_per_s", "model_flops", "executed_flops", "achieved_tflops"}
    step_keys |= {"mfu", "mfu_vs_measured_gemm", "peak_memory_gib", "first_step_s", "checkpointing", "fsdp", "compile"}
    assert all(step_keys <= set(row) for row in results["configs"])
    assert all({"items_per_s", "median_s", "batch", "first_call_s"} <= set(row) for row in results["encoders"])


@pytest.mark.parametrize(
    "argument, value, named",
    [
        ("--configs", "eager,warp", "unknown config 'warp'"),
        ("--configs", "selective+full", "both selective and full"),
        ("--configs", "eager,eager", "twice"),
        ("--batch", "0", "must be > 0, got 0"),
        ("--steps", "-2", "must be > 0, got -2"),
        ("--peak-tflops", "0", "must be > 0, got 0"),
        ("--peak-tflops", "nan", "must be > 0, got nan"),
        ("--warmup", "-1", "expected an int >= 0, got -1"),
        ("--encoder-batch", "many", "expected a positive int, got 'many'"),
        ("--encoder-modes", "jit", "got 'jit'"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it_and_exit_2_before_any_work(gpu_step, capsys, argument, value, named):
    with pytest.raises(SystemExit) as exit_info:
        gpu_step.main(["--device", "cpu", "--tiny", argument, value])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"error: argument {argument}: " in err and named in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_asks_for_the_cpu_smoke_mode(gpu_step, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_step.main([])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "CUDA is required" in err and "--device cpu --tiny" in err


def test_datasheet_peaks_by_device_name(gpu_step):
    peaks = {
        "NVIDIA H100 80GB HBM3": 989.4,
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H200": 989.4,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A100 80GB PCIe": 312.0,
        "NVIDIA L40S": 362.05,
        "NVIDIA L40": 181.05,
        "NVIDIA L4": 121.0,
        "NVIDIA H200 NVL": None,
        "NVIDIA GH200 480GB": None,
        "Tesla V100-SXM2-16GB": None,
    }
    assert {name: gpu_step.datasheet_peak(name)[0] for name in peaks} == peaks


def test_tokens_per_step_count_each_kinds_inputs_once(gpu_step):
    data = gpu_step.make_batches(0, batch=4)  # real text lengths 52, 35, 20, 41
    tokens = gpu_step.tokens_per_step(data, ["pair", "image", "text"])
    assert tokens == {"image_patches": 2 * 4 * 196, "text_tokens": 2 * 148, "total": 2 * 4 * 196 + 2 * 148}
    assert gpu_step.tokens_per_step(data, ["image"]) == {"image_patches": 784, "text_tokens": 0, "total": 784}


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--batch", "0"], "argument --batch: expected an int >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: expected an int >= 0, got -1"),
        (["--impls", "ours,hf"], "--impls: unknown ['hf']"),
        (["--device", "cuda", "--impls", "ours,timm,ours+packed"], "ours+packed packs weights for oneDNN"),
        (["--device", "cuda", "--impls", "ours,timm,ours+fp32gemm"], "['ours+fp32gemm'] compute the CPU's bf16"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ],
)
def test_vit_tower_refuses_a_bad_argument_in_one_line_before_any_work(scripts, capsys, argv, named):
    with pytest.raises(SystemExit) as exit_info:
        scripts[1].main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and named in err


def test_keep_freed_memory_where_the_c_library_is_not_glibc_stops_before_any_work(scripts, capsys, monkeypatch):
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        scripts[1].main(["--keep-freed-memory", "--impls", "ours,timm"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "--keep-freed-memory: the C library is not glibc, nothing to set\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_vit_tower_on_cuda_without_a_gpu_says_so(scripts, capsys):
    with pytest.raises(SystemExit) as exit_info:
        scripts[1].main(["--device", "cuda", "--impls", "ours,timm"])
    assert exit_info.value.code == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


def test_vit_tower_runs_and_reports_against_the_peer(scripts, tmp_path, monkeypatch):
    kept = []  # --keep-freed-memory: set once, for every implementation (here not for the test process)
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: kept.append(True) or True)
    path = tmp_path / "tower.json"
    argv = ["--batch", "1", "--reps", "1", "--warmup", "0", "--dtype", "fp32", "--mode", "inference"]
    scripts[1].main(argv + ["--impls", "ours,timm", "--gemm-reps", "1", "--json", str(path), "--keep-freed-memory"])
    results = json.loads(path.read_text())
    assert kept == [True] and results["keep_freed_memory"] is True
    assert results["device"] == "cpu" and results["batch"] == 1
    rows = {row["impl"]: row for row in results["rows"]}
    assert set(rows) == {"ours", "timm"} and rows["ours"]["best_peer"] == "timm"
    for row in rows.values():
        assert row["images_per_s"] == pytest.approx(1 / row["median_s"])
        assert row["pct_of_gemm_peak"] == pytest.approx(
            100 * row["model_tflops"] / results["gemm"]["fp32"]["peak_tflops"]
        )
    assert rows["ours"]["speed_vs_best_peer_paired"] == pytest.approx(
        rows["timm"]["median_s"] / rows["ours"]["median_s"]
    )
