"""LP-FT in CLIP fine-tuning (examples/clip/finetune.py, ``model.head_init=linear_probe``): the head the run starts
from is a logistic-regression probe of the frozen tower's features of the training items, recorded as the zero-shot
head is, read back (never refitted) on a resume, and the same on two ranks as on one."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.examples.fault_runner import run_script
from tests.examples.test_clip_finetune import (
    FINETUNE,
    FOLDERS,
    SHAPES,
    _config,
    _losses,
    _shapes_folders,
    finetune,
    run_two_recorded_ranks,
    write_tiny_clip_export,
)
from tests.helpers import Killed, stop_fit_after
from torchflava.classify import CLIPImageTower, load_clip_classifier
from torchflava.evaluation.linear_probe import linear_probe
from torchflava.pretrained import load_pretrained
from torchflava.training.config import load_config

LP = ["model.head_init=linear_probe", "model.probe_max_items=100", "model.probe_l2=0.01", "training.max_steps=4"]
LP += ["training.checkpoint_every=2", "eval.wise_ft_alpha=0.5"]


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory):
    return write_tiny_clip_export(tmp_path_factory.mktemp("clip_export"))


def _features(export, source, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The L2-normalised projections of ``items`` of ``source`` through the checkpoint's own preprocessing, and
    their labels, computed here from the checkpoint (not by the recipe)."""
    pretrained = load_pretrained(str(export))
    pixels = torch.stack([pretrained.image_transform(source[i].image) for i in items])
    with torch.no_grad():
        features = F.normalize(CLIPImageTower(pretrained.model).eval()(pixels), dim=-1)
    return features, torch.tensor([int(source[i].label) for i in items])


@pytest.fixture(scope="module")
def lp_run(clip_export, tmp_path_factory):
    """A linear_probe run on shapes (100 probe items, penalty 0.01), with what its probe was fitted on and
    gave, and the model fit was handed (its weights at step 0)."""
    out, seen = tmp_path_factory.mktemp("lp_run"), {}

    def fit_probe(features, labels, num_classes, l2):
        seen["features"], seen["labels"] = features.clone(), labels.clone()
        seen["probe"] = real_fit_probe(features, labels, num_classes, l2)
        return seen["probe"]

    def fit(model, *args, **kwargs):
        seen["model"] = load_clip_classifier(out / "zero_shot").model  # (the record, for the step-0 checks below)
        seen["start"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real_fit(model, *args, **kwargs)

    real_fit_probe, real_fit = finetune.fit_probe, finetune.fit
    finetune.fit_probe, finetune.fit = fit_probe, fit
    try:
        report = finetune.main(_config(clip_export, out, *LP))
    finally:
        finetune.fit_probe, finetune.fit = real_fit_probe, real_fit
    return out, report, seen


def test_the_step_zero_logits_are_the_probes_own_on_the_heads_features(clip_export, lp_run):
    out, _, seen = lp_run
    cfg = _config(clip_export, out, *LP)
    train, _, _ = finetune.build_splits(cfg.data)
    items = finetune.probe_order(len(train), 100, seed=0)
    assert len(items) == 100 and len(set(items)) == 100 and items != list(range(100))  # a seeded order, not 0..99
    features, labels = _features(clip_export, train, items)
    # the probe read exactly these items' features (the evaluation transform, normalised), in this order
    torch.testing.assert_close(seen["features"], features, atol=1e-6, rtol=0)
    assert torch.equal(seen["labels"], labels)
    probe = seen["probe"]
    model = seen["model"]
    model.load_state_dict(seen["start"])  # the weights fit started from, which the record holds
    assert all(
        torch.equal(v, seen["start"][k]) for k, v in load_clip_classifier(out / "zero_shot").model.state_dict().items()
    )
    pretrained = load_pretrained(str(clip_export))
    pixels = torch.stack([pretrained.image_transform(train[i].image) for i in items])
    with torch.no_grad():
        logits = model.eval()(pixels)
    torch.testing.assert_close(logits, probe.logits(features), atol=1e-5, rtol=0)
    assert torch.equal(logits.argmax(dim=1), probe.predict(features))
    assert float(logits.std()) > 0.1  # (logits that say something: not a head of zeros)


def test_the_report_names_the_probe_and_scores_it_as_an_independent_probe_does(clip_export, lp_run):
    out, report, seen = lp_run
    assert report == json.loads((out / "report.json").read_text())
    assert report["head_init"] == "linear_probe" and list(report["validation"]) == [
        "linear_probe",
        "fine_tuned",
        "wise_ft",
    ]
    cfg = _config(clip_export, out, *LP)
    train, val, _ = finetune.build_splits(cfg.data)
    x, y = _features(clip_export, train, finetune.probe_order(len(train), 100, seed=0))
    # the probe fitted here: standardised as the first 80 of the 100 items are, fitted on all with penalty 0.01
    probe = linear_probe((x[:80], y[:80]), (x[80:], y[80:]), num_classes=30, l2_values=[0.01])
    # (features computed in other batches differ by ~1e-7, which L-BFGS's 300 iterations leave ~1e-2 apart)
    torch.testing.assert_close(probe.weight, seen["probe"].weight, atol=0.02, rtol=0)
    val_x, val_y = _features(clip_export, val, list(range(len(val))))
    accuracy = (probe.predict(val_x) == val_y).double().mean().item()
    assert report["validation"]["linear_probe"]["accuracy"] == accuracy
    assert report["validation"]["linear_probe"]["items"] == 120 and accuracy > 1 / 30


def test_a_resume_reads_the_recorded_probe_and_ends_as_the_uninterrupted_run(
    clip_export, lp_run, tmp_path, monkeypatch
):
    reference, report, _ = lp_run
    stop_fit_after(monkeypatch, finetune, 3)  # after step 3: the last checkpoint is step 2's
    with pytest.raises(Killed):
        finetune.main(_config(clip_export, tmp_path, *LP))
    monkeypatch.undo()
    refits = []
    monkeypatch.setattr(finetune, "fit_probe", lambda *args: refits.append(args))  # a refit would give None
    monkeypatch.setattr(finetune, "linear_probe", lambda *args, **kwargs: refits.append(args))
    resumed = finetune.main(_config(clip_export, tmp_path, *LP, "training.resume=auto"))
    assert refits == []
    assert _losses(tmp_path) == _losses(reference) and sorted(_losses(tmp_path)) == [1, 2, 3, 4]
    assert resumed == report
    got, expected = (load_clip_classifier(path / "model").model.state_dict() for path in (tmp_path, reference))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_bad_probe_keys_exit_2_with_one_line_naming_the_key(clip_export, tmp_path):
    base = [*SHAPES, f"model.pretrained={clip_export}", f"training.output_dir={tmp_path / 'run'}"]
    lp = "model.head_init=linear_probe"
    items = "null (every training item) or an int >= 5"
    cases = [
        ("model.probe_max_items", [lp, "model.probe_max_items=0"], items),
        ("model.probe_max_items", [lp, "model.probe_max_items=4"], items),
        ("model.probe_max_items", [lp, "model.probe_max_items=-10"], items),
        ("model.probe_l2", [lp, "model.probe_l2=-0.1"], "null or a finite number >= 0"),
        ("model.probe_l2", [lp, "model.probe_l2=.inf"], "null or a finite number >= 0"),
        ("model.probe_l2", ["model.probe_l2=0.01"], "null, since model.head_init=zero_shot fits no probe"),
        ("model.probe_l2", ["model.head_init=random", "model.probe_l2=0"], "model.head_init=random fits no probe"),
        ("model.head_init", ["model.head_init=lp"], "one of ('zero_shot', 'random', 'linear_probe')"),
    ]
    for key, overrides, says in cases:
        result = run_script(FINETUNE, [*base, *overrides])
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (key, result.stderr[-2000:])
        assert lines[0].startswith(f"error: key '{key}': expected") and says in lines[0], (key, lines[0])
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_key_the_head_init_does_not_read_is_refused_naming_it(clip_export, tmp_path):
    """model.templates with model.head_init=linear_probe (its head is the probe's: no prompt is read) and
    model.probe_max_items with another head_init (no probe is fitted) were accepted and ignored. Each is refused
    naming the key; null, the default and the task's prompts (which a run records) pass, and a probe run started
    with prompts of its own resumes without them."""
    base = [*SHAPES, f"model.pretrained={clip_export}", f"training.output_dir={tmp_path / 'run'}"]
    lp, task_prompts = ["model.head_init=linear_probe"], list(finetune.TASK_TEMPLATES["shapes"])
    for overrides, templates in (
        (lp, None),
        (lp, task_prompts),
        ([], ["a photo of a {}."]),
        (["model.probe_max_items=10000"], None),
    ):
        cfg = load_config(finetune.FinetuneConfig, [*base, *overrides])
        cfg.model.templates = templates
        finetune.validate(cfg, 1)
    refused = {
        "model.templates": (
            lp,
            ["a photo of a {}."],
            f"null (or data.task=shapes's {task_prompts}, which a run records), since model.head_init=linear_probe "
            "makes the head of the probe, reading no prompt, got ['a photo of a {}.']",
        ),
        "model.probe_max_items": (
            ["model.probe_max_items=500"],
            None,
            "its default, 10000, since model.head_init=zero_shot fits no probe, got 500",
        ),
    }
    for key, (overrides, templates, says) in refused.items():
        cfg = load_config(finetune.FinetuneConfig, [*base, *overrides])
        cfg.model.templates = templates
        with pytest.raises(finetune.ConfigError) as error:
            finetune.validate(cfg, 1)
        assert str(error.value) == f"key '{key}': expected {says}"
    probe = load_config(finetune.FinetuneConfig, [*base, *lp])
    assert "model.templates" in probe.resume_ignored()  # (a run started with prompts of its own, dropped)
    assert "model.templates" not in load_config(finetune.FinetuneConfig, base).resume_ignored()  # (its head's)


def test_two_gloo_processes_fit_the_probe_one_process_fits(clip_export, tmp_path):
    """Each rank reads every other probe item (an unreadable one skipped where it falls); rank 0's probe, given to
    both, is the one process's, and so is the head both record."""
    train, val = _shapes_folders(tmp_path / "data", train=48, val=8)
    first = sorted(sorted(train.iterdir())[0].iterdir())[0]
    (first.parent / f"{first.stem}_unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    common = [f"model.pretrained={clip_export}", *SHAPES, *FOLDERS, f"data.train={train}"]
    common += [f"data.val={val}", "training.max_steps=1", "optim.warmup_steps=0"]
    common += ["model.head_init=linear_probe", "model.probe_max_items=null", "model.probe_l2=0.01"]
    # one intra-op thread in both runs (torchrun's OMP_NUM_THREADS=1): the tower's features on 1 and 2 threads differ
    # by ~2e-7, which the probe's L-BFGS (300 iterations, not converged that far) turns into weights ~1e-3 apart
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = finetune.main(load_config(finetune.FinetuneConfig, [*common, f"training.output_dir={tmp_path / 'one'}"]))
    finally:
        torch.set_num_threads(threads)
    result = run_two_recorded_ranks(tmp_path, common)  # each rank's readable_chunks keys, call by call
    assert "linear probe: 48 training items (1 unreadable)" in result.stdout
    # the first pass of each rank: every other one of the 49 probe items (positions in the seeded order)
    reads = [json.loads((tmp_path / f"reads{r}.jsonl").read_text().splitlines()[0]) for r in (0, 1)]
    assert reads == [list(range(0, 49, 2)), list(range(1, 49, 2))]
    heads = [load_clip_classifier(tmp_path / run / "zero_shot").model.head for run in ("one", "two")]
    assert torch.equal(heads[1].weight, heads[0].weight) and torch.equal(heads[1].bias, heads[0].bias)
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["validation"]["linear_probe"] == one["validation"]["linear_probe"]


def test_a_run_recorded_before_the_probe_keys_existed_resumes(clip_export, tmp_path, monkeypatch):
    """A run whose config.yaml (and its checkpoint's) states no model.probe_max_items nor model.probe_l2 was
    refused (``None -> 10000``), though a resume never reads them: its head is the recorded one."""
    from torchflava.training.integrity import write_marker

    common = ["training.max_steps=3", "training.checkpoint_every=2"]
    stop_fit_after(monkeypatch, finetune, 3)  # after step 3: the last checkpoint is step 2's
    with pytest.raises(Killed):
        finetune.main(_config(clip_export, tmp_path, *common))
    monkeypatch.undo()
    checkpoint = tmp_path / "checkpoints" / "step_00000002"
    for config in (tmp_path / "config.yaml", checkpoint / "config.yaml"):
        text = config.read_text()
        old = "".join(line for line in text.splitlines(keepends=True) if "probe_" not in line)
        assert len(old.splitlines()) == len(text.splitlines()) - 2
        config.write_text(old)
    write_marker(checkpoint, 2, 1)  # (the checkpoint's manifest digests its config)
    report = finetune.main(_config(clip_export, tmp_path, *common, "training.resume=auto"))
    assert report["steps"] == 3 and sorted(_losses(tmp_path)) == [1, 2, 3]
    # a new run reads the keys: not ignored (only those of the shapes task, which image_folder does not read)
    assert finetune.FinetuneConfig().resume_ignored() == {"data.shapes_train", "data.shapes_val", "data.image_size"}
