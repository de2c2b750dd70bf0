"""Every bad recipe value is refused before any work: one line naming the key, exit 2, nothing written.

Data that cannot be opened counts as a bad value of the key that names it: a missing or empty file,
a directory where a file is wanted, a file that is not tar, TSV or JSON lines as the key says, a
header without the configured columns, labels that are not among the configured ones.
"""

import json
from pathlib import Path
import subprocess
import sys

from PIL import Image
import pytest
import webdataset as wds

from tests.helpers import load_recipe, write_tiny_export

REPO = Path(__file__).resolve().parents[2]
FLAVA = (
    REPO / "examples" / "flava" / "train.py",
    REPO / "examples" / "flava" / "configs" / "pretraining" / "debug.yaml",
)
CLIP = (REPO / "examples" / "clip" / "train.py", REPO / "examples" / "clip" / "configs" / "debug.yaml")
FINETUNE = REPO / "examples" / "flava" / "finetune.py"


RECIPES = {
    "flava": load_recipe("examples/flava/train.py", "bad_values_flava"),
    "clip": load_recipe("examples/clip/train.py", "bad_values_clip"),
    "finetune": load_recipe("examples/flava/finetune.py", "bad_values_finetune"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Data files, good and bad, that the overrides name as ``{files}/...``."""
    root = tmp_path_factory.mktemp("files")
    write_tiny_export(root / "export")
    tsv = "question\tsentence\tlabel\n" + "".join(
        f"is it {i}?\tit is {i}\t{'pos' if i % 2 else 'neg'}\n" for i in range(8)
    )
    (root / "train.tsv").write_text(tsv)
    (root / "dev.tsv").write_text(tsv)
    (root / "no_label_column.tsv").write_text("question\tsentence\n" + "a?\tb\n")
    (root / "unknown_label.tsv").write_text("question\tsentence\tlabel\n" + "a?\tb\tmaybe\n")
    (root / "header_only.tsv").write_text("question\tsentence\tlabel\n")
    (root / "latin1.tsv").write_bytes("question\tsentence\tlabel\nqu\xe9?\tb\tpos\n".encode("latin-1"))
    (root / "not_a_checkpoint").mkdir()
    (root / "garbage.safetensors").write_bytes(b"\x10" * 64)
    for split, classes in (("train", ("red", "blue")), ("val", ("red", "green")), ("one_class", ("red",))):
        for name in classes:
            (root / "classes" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "classes" / split / name / "0.png")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(root / "0.png")
    (root / "labels.jsonl").write_text(json.dumps({"image": "0.png", "text": "what colour?", "label": "blue"}) + "\n")
    (root / "broken.jsonl").write_text('{"image": "0.png", "text": \n')
    (root / "empty.txt").write_text("\n  \n")
    (root / "not_a.tar").write_text("this is not a tar archive\n" * 40)
    (root / "empty_dir").mkdir()
    (root / "captions.txt").write_text("0.png\ta caption\n")
    (root / "shards").mkdir()
    for shard in range(2):
        with wds.TarWriter(str(root / "shards" / f"p-{shard}.tar")) as writer:
            writer.write({"__key__": "0", "png": (root / "0.png").read_bytes(), "txt": "a blue square"})
    return root


SHARED = [
    ("training.grad_accumulation=0", "training.grad_accumulation"),
    ("training.seed=-1", "training.seed"),
    ("training.seed=18446744073709551616", "training.seed"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.eps=0", "optim.eps"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm"),
    ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("training.threads=0", "training.threads"),
    ("training.keep_checkpoints=0", "training.keep_checkpoints"),
    ("training.strategy=horovod", "training.strategy"),
    ("training.device=tpu", "training.device"),
    ("training.max_steps=0", "training.max_steps"),
    ("training.global_batch_size=-4", "training.global_batch_size"),
    ("training.resume=/nowhere/step_00000001", "training.resume"),
    ("optim.lr_multipliers.no_such_module=0.5", "optim.lr_multipliers"),
]
EVAL = [
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.templates=[]", "eval.templates"),
    ("eval.templates=[a photo]", "eval.templates"),
]
FILES = "data.source=files"
STREAMED = (FILES, "data.streaming.enabled=true")
TWO_SHARDS = "data.files.pairs_shards={files}/shards/p-{{0..1}}.tar"
STREAMING = [
    ((FILES, "data.streaming.shuffle_buffer=-1"), "data.streaming.shuffle_buffer"),
    ("data.streaming.enabled=true", "data.streaming.enabled"),  # data.source=shapes
    (STREAMED, "data.files.pairs_shards"),  # nothing to stream
    ((FILES, TWO_SHARDS), "data.files.pairs_shards"),  # a brace pattern needs streaming
    ((FILES, "data.files.pairs_shards=http://127.0.0.1:9/p.tar"), "data.files.pairs_shards"),
    ((*STREAMED, "data.files.pairs_shards={files}/shards/p-{{0..2}}.tar"), "data.files.pairs_shards"),  # no p-2
    ((*STREAMED, TWO_SHARDS, "data.num_workers=3"), "data.files.pairs_shards"),  # 3 slots, 2 shards
    ((*STREAMED, TWO_SHARDS, "data.num_workers=-1"), "data.num_workers"),
    ((*STREAMED, "data.files.pairs_shards={files}/not_a.tar"), "data.vocab"),  # no readable caption
]
NO_RATIOS = ("data.ratios.pairs=0", "data.ratios.images=0", "data.ratios.texts=0")
FLAVA_ONLY = [
    ("model.patch_size=0", "model.patch_size"),
    ("model.image_embed_dim=-32", "model"),
    ("model.text_num_heads=5", "model"),
    (NO_RATIOS, "data.ratios"),
    ("data.mlm_probability=1.5", "data.mlm_probability"),
    ("data.itm_negative_probability=-0.1", "data.itm_negative_probability"),
    ("data.vocab_size=3", "data.vocab_size"),
    ("data.num_masked_patches=999", "data.num_masked_patches"),
    ("data.max_text_length=1", "data.max_text_length"),
    ("data.vocab=/nowhere/vocab.txt", "data.vocab"),
    ("codebook.hidden_dim=0", "codebook"),
    ("model.pretrained={files}/garbage.safetensors", "model.pretrained"),  # was a traceback after the vocabulary
    ("model.pretrained={files}/not_a_checkpoint", "model.pretrained"),
    ("data.shapes.num_test=1000", "data.shapes.num_test"),  # was found after training, in the evaluation
    ("data.shapes.image_size=0", "data.shapes.image_size"),
    ("data.shapes.num_images=-1", "data.shapes.num_images"),  # was read as 0
    # data that cannot be opened
    ((FILES, "data.files.texts=/nonexistent"), "data.files.texts"),
    ((FILES, "data.files.texts={files}/empty_dir"), "data.files.texts"),
    ((FILES, "data.files.texts={files}/empty.txt"), "data.files.texts"),
    ((FILES, "data.files.pairs_shards=/nowhere/shard-*.tar"), "data.files.pairs_shards"),
    ((FILES, "data.files.pairs_shards={files}/not_a.tar"), "data.files.pairs_shards"),
    ((FILES, "data.files.images_root={files}/empty_dir"), "data.files.images_root"),
    ((FILES, "data.files.images_root={files}/train.tsv"), "data.files.images_root"),
    ((FILES, "data.files.pairs_root={files}"), "data.files.pairs_captions"),
    (
        (FILES, "data.files.pairs_root={files}", "data.files.pairs_captions={files}/captions.txt"),
        "data.files.pairs_captions",
    ),
    ((FILES,), "data.files"),
    ((FILES, "data.files.texts={files}/train.tsv", "data.ratios.texts=0"), "data.ratios"),
]
CLIP_ONLY = [
    ("model.vision_heads=5", "model"),
    ("model.patch_size=0", "model"),
    ("data.max_text_length=100", "data.max_text_length"),
    ("data.shapes.num_pairs=0", "data.shapes.num_pairs"),
    ("data.shapes.num_test=0", "data.shapes.num_test"),
    ("model.pretrained={files}/garbage.safetensors", "model.pretrained"),
    ((FILES,), "data.files"),
    ((FILES, "data.files.pairs_shards=/nowhere/*.tar"), "data.files.pairs_shards"),
    ((FILES, "data.files.pairs_shards={files}/not_a.tar"), "data.files.pairs_shards"),
    ((FILES, "data.files.pairs_captions={files}/labels.jsonl"), "data.files.pairs_root"),
    ((FILES, "data.files.pairs_root={files}", "data.files.pairs_captions=/nowhere.jsonl"), "data.files.pairs_captions"),
    (
        (FILES, "data.files.pairs_root={files}", "data.files.pairs_captions={files}/captions.txt"),
        "data.files.pairs_captions",
    ),
    # every caption line malformed: the captions file is at fault (it was blamed on data.vocab, no text to learn)
    (
        (FILES, "data.files.pairs_root={files}", "data.files.pairs_captions={files}/broken.jsonl"),
        "data.files.pairs_captions",
    ),
]
IMAGE_TEXT = ("data.task=image_text", "data.train={files}/labels.jsonl", "data.val={files}/labels.jsonl")
IMAGE_TEXT += ("data.image_root={files}", "data.labels=[red,blue]", "model.modality=multimodal")
IMAGE_FOLDER = ("data.task=image_folder", "data.train={files}/classes/train", "data.val={files}/classes/train")
IMAGE_FOLDER += ("data.labels=null", "model.modality=image")
SHAPES = ("data.task=shapes", "model.modality=image")
FINETUNE_ONLY = [
    ("data.task=audio", "data.task"),
    ("model.modality=video", "model.modality"),
    ("model.modality=image", "model.modality"),  # a text task
    ("model.loss=hinge", "model.loss"),
    ("model.loss=mse", "model.loss"),  # classes
    ("model.loss=binary_cross_entropy", "model.loss"),  # class ids, not scores
    (("data.labels=null", "model.loss=cross_entropy"), "model.loss"),  # regression
    ("model.classifier_hidden_dim=0", "model.classifier_hidden_dim"),
    ("model.classifier_dropout=1.0", "model.classifier_dropout"),
    ("model.classifier_dropout=-0.1", "model.classifier_dropout"),
    ("model.pretrained=null", "model.pretrained"),
    ("model.pretrained=/nowhere/run", "model.pretrained"),
    ("model.pretrained={files}/train.tsv", "model.pretrained"),
    ("model.pretrained={files}/not_a_checkpoint", "model.pretrained"),
    ("data.train=null", "data.train"),
    ("data.val=null", "data.val"),
    ("data.train=/nowhere/train.tsv", "data.train"),
    ("data.val=/nowhere/dev.tsv", "data.val"),
    ("data.train={files}/classes", "data.train"),
    ("data.train={files}/no_label_column.tsv", "data.train"),
    ("data.val={files}/unknown_label.tsv", "data.val"),
    ("data.train={files}/header_only.tsv", "data.train"),
    ("data.train={files}/latin1.tsv", "data.train"),
    ("data.text_columns=[]", "data.text_columns"),
    ("data.text_columns=[question,sentence,label]", "data.text_columns"),
    ("data.text_columns=[question,question]", "data.text_columns"),
    ("data.label_column=sentence", "data.label_column"),
    ("data.label_column=''", "data.label_column"),
    ("data.labels=[pos]", "data.labels"),
    ("data.labels=[pos,pos]", "data.labels"),
    ("data.labels=[]", "data.labels"),
    ("data.max_text_length=1", "data.max_text_length"),
    ((*IMAGE_TEXT, "data.labels=null"), "data.labels"),
    ((*IMAGE_TEXT, "data.image_root=null"), "data.image_root"),
    ((*IMAGE_TEXT, "data.image_root=/nowhere/images"), "data.image_root"),
    ((*IMAGE_TEXT, "data.train={files}/broken.jsonl"), "data.train"),
    ((*IMAGE_TEXT, "data.labels=[red,green]"), "data.train"),  # 'blue' is not a configured label
    ((*IMAGE_TEXT, "model.loss=binary_cross_entropy"), "model.loss"),  # the file holds class labels
    ((*IMAGE_FOLDER, "data.train={files}/train.tsv"), "data.train"),
    ((*IMAGE_FOLDER, "data.val={files}/classes/val"), "data.val"),  # 'green' is not a training class
    ((*IMAGE_FOLDER, "data.train={files}/classes/one_class"), "data.train"),
    ((*IMAGE_FOLDER, "data.train={files}/empty_dir"), "data.train"),
    ((*SHAPES, "data.shapes_train=0"), "data.shapes_train"),
    ((*SHAPES, "data.shapes_val=541"), "data.shapes_val"),
    ((*SHAPES, "data.image_size=4"), "data.image_size"),
    ((*SHAPES, "model.modality=text"), "model.modality"),
]
FINETUNE_BASE = [
    "model.pretrained={files}/export",
    "model.modality=text",
    "model.classifier_hidden_dim=16",
    "data.task=glue",
    "data.train={files}/train.tsv",
    "data.val={files}/dev.tsv",
    "data.text_columns=[question,sentence]",
    "data.labels=[neg,pos]",
    "training.max_steps=2",
    "training.global_batch_size=4",
    "optim.warmup_steps=1",
    "training.progress_bar=false",
    "training.tensorboard=false",
]
BASE = {"flava": [f"config={FLAVA[1]}"], "clip": [f"config={CLIP[1]}"], "finetune": FINETUNE_BASE}
CASES = (
    [("flava", *c) for c in SHARED + EVAL + FLAVA_ONLY + STREAMING]
    + [("clip", *c) for c in SHARED + EVAL + CLIP_ONLY + STREAMING]
    + [("finetune", *c) for c in SHARED + FINETUNE_ONLY]
)


def _config(recipe: str, overrides, files: Path, out: Path):
    module = RECIPES[recipe]
    schema = module.FinetuneConfig if recipe == "finetune" else module.TrainConfig
    given = [overrides] if isinstance(overrides, str) else list(overrides)
    arguments = [a.format(files=files) for a in BASE[recipe] + given] + [f"training.output_dir={out}"]
    return module.load_config(schema, arguments)


def _id(case) -> str:
    recipe, overrides, _ = case
    return f"{recipe}-{overrides if isinstance(overrides, str) else ' '.join(overrides)}"


def test_the_base_configs_are_valid(files, tmp_path):
    for recipe in RECIPES:
        RECIPES[recipe].validate(_config(recipe, [], files, tmp_path / recipe), 1)
    report = RECIPES["finetune"].main(_config("finetune", [], files, tmp_path / "finetune"))
    assert report["steps"] == 2  # the base the bad values change runs


@pytest.mark.parametrize("recipe, overrides, key", CASES, ids=[_id(c) for c in CASES])
def test_a_bad_value_is_refused_before_any_work(recipe, overrides, key, files, tmp_path):
    module = RECIPES[recipe]
    out = tmp_path / "run"
    cfg = _config(recipe, overrides, files, out)
    with pytest.raises(module.ConfigError) as caught:
        module.main(cfg)
    message = str(caught.value)
    assert message.startswith(f"key '{key}'") and ": expected " in message and "\n" not in message, message
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], [".run.lock"])  # nothing written


COMMANDS = [
    (
        [str(CLIP[0]), f"config={CLIP[1]}", "optim.lr=-1"],
        "error: key 'optim.lr': expected a finite number > 0, got -1.0",
    ),
    (
        [str(FLAVA[0]), f"config={FLAVA[1]}", "data.source=files", "data.files.texts=/nonexistent"],
        "error: key 'data.files.texts': expected an existing file, got '/nonexistent'",
    ),
    (
        [str(FLAVA[0]), f"config={FLAVA[1]}", "data.source=files", "data.files.texts={files}/empty.txt"],
        "error: key 'data.files.texts': expected a UTF-8 text file, got '{files}/empty.txt' (path must hold at "
        "least one non-blank line, '{files}/empty.txt' holds none)",
    ),
    (
        [str(CLIP[0]), f"config={CLIP[1]}", "data.source=files", "data.files.pairs_shards=s3://bucket/p.tar"],
        "error: key 'data.files.pairs_shards': expected local uncompressed tar files (a path or glob); URLs, brace "
        "patterns and .tar.gz need data.streaming.enabled=true, got 's3://bucket/p.tar'",
    ),
    (
        [str(FINETUNE), *FINETUNE_BASE, "data.train={files}/no_label_column.tsv"],
        "error: key 'data.train': expected a TSV file with a header holding ['question', 'sentence', 'label'] and "
        "labels in ['neg', 'pos'], got '{files}/no_label_column.tsv' ({files}/no_label_column.tsv: missing "
        "column(s) ['label']; the header has ['question', 'sentence'])",
    ),
]


@pytest.mark.parametrize(
    "command, expected", COMMANDS, ids=["clip-lr", "flava-texts", "flava-empty", "clip-s3-unstreamed", "finetune"]
)
def test_the_command_line_exits_2_with_one_line(command, expected, files, tmp_path):
    arguments = [a.format(files=files) for a in command]
    result = subprocess.run(
        [sys.executable, *arguments, f"training.output_dir={tmp_path / 'run'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == expected.format(files=files)
    assert not (tmp_path / "run").exists() or [p.name for p in (tmp_path / "run").iterdir()] == [".run.lock"]


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    module = RECIPES["clip"]
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "run" / "checkpoints").parent.mkdir()
    (tmp_path / "run" / "checkpoints").write_text("a file where the checkpoints go")
    for out in (tmp_path / "file", tmp_path / "file" / "below", tmp_path / "run"):
        cfg = module.load_config(module.TrainConfig, [f"config={CLIP[1]}", f"training.output_dir={out}"])
        with pytest.raises(module.ConfigError, match="key 'training.output_dir': expected a directory this process"):
            module.main(cfg)
