"""Every bad recipe value is refused before any work: one line naming the key, exit 2, nothing written.

Data that cannot be opened counts as a bad value of the key that names it: a missing or empty file,
a directory where a file is wanted, a file that is not tar, TSV or JSON lines as the key says, a
header without the configured columns, labels that are not among the configured ones.
"""

import json
from pathlib import Path

from PIL import Image
import pytest
import webdataset as wds

from tests.examples.fault_runner import run_script
from tests.helpers import load_recipe, write_tiny_export
from torchflava.training.config import ConfigError, load_config
from torchflava.utils.checkpoint import save_state_dict

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
    (root / "integer_labels.tsv").write_text(tsv.replace("\tpos", "\t1").replace("\tneg", "\t0"))
    (root / "latin1.tsv").write_bytes("question\tsentence\tlabel\nqu\xe9?\tb\tpos\n".encode("latin-1"))
    (root / "not_a_checkpoint").mkdir()
    (root / "clip_run" / "model").mkdir(parents=True)  # what a CLIP run exports (its files not read here)
    for name in ("clip_config.json", "clip.safetensors", "vocab.txt"):
        (root / "clip_run" / "model" / name).write_text("{}")
    (root / "garbage.safetensors").write_bytes(b"\x10" * 64)
    for split, classes in (("train", ("red", "blue")), ("val", ("red", "green")), ("one_class", ("red",))):
        for name in classes:
            (root / "classes" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "classes" / split / name / "0.png")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(root / "0.png")
    (root / "classes" / "unreadable" / "red").mkdir(parents=True)
    for i in range(3):
        (root / "classes" / "unreadable" / "red" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "labels.jsonl").write_text(json.dumps({"image": "0.png", "text": "what colour?", "label": "blue"}) + "\n")
    (root / "broken.jsonl").write_text('{"image": "0.png", "text": \n')
    # captions and labels of images that are not there: every item unusable (was a RuntimeError at step 1)
    (root / "missing_images.tsv").write_text("".join(f"nope{i}.png\ta red square\n" for i in range(3)))
    (root / "missing_images.jsonl").write_text(
        json.dumps({"image": "nope.png", "text": "what?", "label": "red"}) + "\n"
    )
    (root / "empty.txt").write_text("\n  \n")
    (root / "not_a.tar").write_text("this is not a tar archive\n" * 40)
    (root / "empty_dir").mkdir()
    (root / "captions.txt").write_text("0.png\ta caption\n")
    (root / "special_only_vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "blue", "square"]))
    with wds.TarWriter(str(root / "images_only.tar")) as writer:  # samples with an image and no caption
        for key in range(3):
            writer.write({"__key__": str(key), "png": (root / "0.png").read_bytes()})
    # captions files as researchers have them: a Karpathy split file, open_clip's CSV of absolute paths
    karpathy = [
        {"filepath": ".", "filename": "0.png", "split": split, "sentences": [{"raw": f"a {split} square"}]}
        for split in ("train", "restval", "val", "test")
    ]
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}))
    (root / "coco_karpathy_test.json").write_text(json.dumps([{"image": "0.png", "caption": ["a blue square"]}]))
    (root / "absolute.csv").write_text(f"filepath,title\n{root / '0.png'},a blue square\n")
    (root / "shards").mkdir()
    for shard in range(2):
        with wds.TarWriter(str(root / "shards" / f"p-{shard}.tar")) as writer:
            writer.write({"__key__": "0", "png": (root / "0.png").read_bytes(), "txt": "a blue square"})
    return root


SHARED = [
    ("training.grad_accumulation=0", "training.grad_accumulation"),
    ("training.grad_accumulation=1000000000000", "training.grad_accumulation"),  # was 'training.max_steps'
    ("training.seed=-1", "training.seed"),
    ("training.seed=18446744073709551616", "training.seed"),
    # sizes that asked for arrays of GiBs to TiBs, or overflowed numpy, at the first step
    ("training.max_steps=9999999999999999999999", "training.max_steps"),
    (("training.max_steps=20000000", "training.grad_accumulation=8"), "training.max_steps"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.eps=0", "optim.eps"),
    ("optim.eps=1e12", "optim.eps"),  # every update about 0: a run that trained nothing
    ("training.collective_timeout_s=1e-9", "training.collective_timeout_s"),  # failed at the first collective
    ("optim.weight_decay=1e12", "optim.weight_decay"),  # lr x weight_decay >= 1: NaN weights, a traceback
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm"),
    ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("training.threads=0", "training.threads"),
    ("training.threads=1000000000000", "training.threads"),  # was torch's overflow traceback once started
    ("training.keep_checkpoints=0", "training.keep_checkpoints"),
    ("training.strategy=horovod", "training.strategy"),
    ("training.device=tpu", "training.device"),
    ("training.max_steps=0", "training.max_steps"),
    ("training.global_batch_size=-4", "training.global_batch_size"),
    ("training.global_batch_size=1000000000000", "training.global_batch_size"),  # fine-tuning hung
    ("training.resume=/nowhere/step_00000001", "training.resume"),
    ("optim.lr_multipliers.no_such_module=0.5", "optim.lr_multipliers"),
]
EVAL = [
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.templates=[]", "eval.templates"),
    ("eval.templates=[a photo]", "eval.templates"),
    # prompts cut to 2 tokens read alike: the evaluation after training raised (a traceback, the run trained)
    ("data.max_text_length=2", "data.max_text_length"),
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
    ("data.num_workers=-1", "data.num_workers"),  # (not streamed: streaming_checks names it for both sources)
    ("data.num_workers=1000000", "data.num_workers"),
    ((*STREAMED, TWO_SHARDS, "data.num_workers=1000000"), "data.num_workers"),
    ((*STREAMED, "data.files.pairs_shards={files}/not_a.tar"), "data.files.pairs_shards"),  # no readable shard
]
TOO_LONG = "/tmp/" + "x" * 300  # a path component past the OS limit: OSError from Path.exists, not False
VOCAB = [
    ("data.vocab_training_texts=0", "data.vocab_training_texts"),  # CLIP blamed it on data.vocab
    ("data.vocab_training_texts=-5", "data.vocab_training_texts"),
    ("data.vocab_size=16", "data.vocab_size"),  # too few for the text's characters: was blamed on data.vocab
    ("data.vocab={files}/special_only_vocab.txt", "data.vocab"),  # was a TokenMasker traceback (FLAVA)
    (f"data.vocab={TOO_LONG}", "data.vocab"),
    ((FILES, f"data.files.pairs_shards={TOO_LONG}"), "data.files.pairs_shards"),
    # no sample has a caption: a RuntimeError at step 1 with data.vocab, else blamed on data.vocab
    ((FILES, "data.files.pairs_shards={files}/images_only.tar"), "data.files.pairs_shards"),
    (
        (FILES, "data.files.pairs_shards={files}/images_only.tar", "data.vocab={files}/vocab.txt"),
        "data.files.pairs_shards",
    ),
]
NO_RATIOS = ("data.ratios.pairs=0", "data.ratios.images=0", "data.ratios.texts=0")
FLAVA_ONLY = [
    ("model.patch_size=0", "model.patch_size"),
    ("model.image_embed_dim=-32", "model.image_embed_dim"),
    ("model.text_num_heads=5", "model"),  # the error names text_embed_dim too: the section
    (NO_RATIOS, "data.ratios"),
    ("data.ratios.pairs=inf", "data.ratios"),  # was a traceback after the vocabulary was learnt
    ("pretraining.ignore_index=-1", "pretraining.ignore_index"),  # the collator's is -100: a step-1 traceback
    ("pretraining.mlm_weight=inf", "pretraining.mlm_weight"),  # was a non-finite loss stop after training
    # lr x factor x weight_decay >= 1 zeroed the text encoder's weights: a non-finite loss stop at step 2
    ("optim.lr_multipliers.text_encoder=1e12", "optim.lr_multipliers"),
    ("data.mlm_probability=1.5", "data.mlm_probability"),
    ("data.itm_negative_probability=-0.1", "data.itm_negative_probability"),
    ("data.vocab_size=3", "data.vocab_size"),
    ("data.num_masked_patches=999", "data.num_masked_patches"),
    ("data.min_mask_block=7", "data.min_mask_block"),  # > num_masked_patches (6): masked almost nothing
    ("data.max_text_length=1", "data.max_text_length"),
    ("data.vocab=/nowhere/vocab.txt", "data.vocab"),
    ("codebook.hidden_dim=0", "codebook.hidden_dim"),
    ("codebook.pretrained=/nowhere/dvae.pt", "codebook.pretrained"),  # was a traceback after the vocabulary
    ("codebook.pretrained={files}/garbage.safetensors", "codebook.pretrained"),
    ("model.pretrained={files}/garbage.safetensors", "model.pretrained"),  # was a traceback after the vocabulary
    ("model.pretrained={files}/not_a_checkpoint", "model.pretrained"),
    ("data.shapes.num_test=1000", "data.shapes.num_test"),  # was found after training, in the evaluation
    ("data.shapes.num_test=4", "data.shapes.num_test"),  # as was R@5 of fewer than 5 scenes
    ("data.shapes.image_size=0", "data.shapes.image_size"),
    ("data.shapes.image_size=1000000000000", "data.shapes.image_size"),  # was an overflow traceback once started
    ("data.shapes.num_images=-1", "data.shapes.num_images"),  # was read as 0
    ("data.shapes.num_texts=1000000000000", "data.shapes.num_texts"),
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
    # a ratio of a kind without a source: the run trained on the other kinds, without a word
    (("data.shapes.num_images=0", "data.ratios.images=0.3"), "data.ratios.images"),
    (
        (FILES, "data.files.pairs_root={files}", "data.files.pairs_captions={files}/missing_images.tsv"),
        "data.files.pairs_captions",
    ),
    # accepted, and trained a model whose output is a constant, or image losses that are always 0
    ("model.dropout=1.0", "model.dropout"),
    ("pretraining.image_vocab_size=1", "pretraining.image_vocab_size"),
    # sizes past this machine's memory: an allocator's traceback once the run had started
    ("model.projection_dim=1000000000000", "model"),
    ("pretraining.image_vocab_size=1000000000000", "pretraining"),
    ("model.multimodal_num_layers=1000000000000", "model"),  # the check's meta build ran until killed
    ("pretraining.pretrained=/nowhere/flava", "pretraining.pretrained"),  # was a FileNotFoundError traceback
    # one pair per micro-batch: a contrastive loss of 0 at every step (no negatives)
    (("training.global_batch_size=8", "training.grad_accumulation=8"), "training.global_batch_size"),
    ("model.logit_scale_init=1000", "model.logit_scale_init"),  # a NaN loss at the first step
    # every LayerNorm's output about 0 (its input over 10^6)
    ("model.norm_eps=1e12", "model.norm_eps"),
    ("pretraining.head_norm_eps=1e12", "pretraining.head_norm_eps"),
]
# data settings that were silently ignored: files under data.source=shapes, or both forms of pairs; the
# shapes world's seed on files, and the sample a vocabulary is learnt from with data.vocab read (the keys no
# shipped config sets: debug.yaml's data.shapes.* and data.vocab_size, taken on files or with data.vocab, pass)
IGNORED = [
    ((FILES, "data.shapes.seed=3"), "data.shapes.seed"),
    (("data.vocab={files}/vocab.txt", "data.vocab_training_texts=500"), "data.vocab_training_texts"),
    ("data.files.pairs_shards=/nowhere/*.tar", "data.files.pairs_shards"),
    ("data.files.pairs_captions={files}/captions.txt", "data.files.pairs_captions"),
    (
        (FILES, "data.files.pairs_shards={files}/shards/p-0.tar", "data.files.pairs_captions={files}/captions.txt"),
        "data.files.pairs_shards",
    ),
]
CLIP_ONLY = [
    # a vocabulary learnt from 2 pairs lacks the class words: the evaluation after training raised
    (("data.shapes.num_pairs=2", "training.global_batch_size=2"), "eval.enabled"),
    ("model.vision_heads=5", "model"),
    ("model.embed_dim=1000000000000", "model"),  # past this machine's memory: was an allocator's traceback
    ("model.vision_layers=1000000000000", "model"),  # the check's meta build ran until killed
    ("model.patch_size=0", "model.patch_size"),
    ("data.max_text_length=100", "data.max_text_length"),
    ("model.context_length=0", "model.context_length"),  # was 'data.max_text_length': expected in [2, 0]
    ("data.shapes.num_pairs=0", "data.shapes.num_pairs"),
    ("data.shapes.num_pairs=1000000000000", "data.shapes.num_pairs"),
    ("data.shapes.num_test=0", "data.shapes.num_test"),
    ("data.shapes.image_size=1000000000000", "data.shapes.image_size"),  # was an overflow traceback once started
    ("data.shapes.num_test=4", "data.shapes.num_test"),  # R@5 of 4 scenes: a traceback after training
    # one pair per micro-batch: no negatives, loss 0 and no gradient (trained nothing and exited 0)
    ("training.global_batch_size=1", "training.global_batch_size"),
    (("training.global_batch_size=8", "training.grad_accumulation=8"), "training.global_batch_size"),
    ("model.pretrained={files}/garbage.safetensors", "model.pretrained"),
    ((FILES,), "data.files"),
    ((FILES, "data.files.pairs_shards=/nowhere/*.tar"), "data.files.pairs_shards"),
    ((FILES, "data.files.pairs_shards={files}/not_a.tar"), "data.files.pairs_shards"),
    ((FILES, "data.files.pairs_captions={files}/missing_images.tsv"), "data.files.pairs_root"),  # relative paths
    ((FILES, "data.files.pairs_root={files}", "data.files.pairs_captions=/nowhere.jsonl"), "data.files.pairs_captions"),
    ("model.logit_scale_init=1000", "model.logit_scale_init"),  # a NaN loss at the first step
    ("model.norm_eps=1e12", "model.norm_eps"),  # every LayerNorm's output about 0
    (
        (FILES, "data.files.pairs_root={files}", "data.files.pairs_captions={files}/captions.txt"),
        "data.files.pairs_captions",
    ),
    # every caption line malformed: the captions file is at fault (it was blamed on data.vocab, no text to learn)
    (
        (FILES, "data.files.pairs_root={files}", "data.files.pairs_captions={files}/broken.jsonl"),
        "data.files.pairs_captions",
    ),
    (
        (FILES, "data.files.pairs_root={files}", "data.files.pairs_captions={files}/missing_images.tsv"),
        "data.files.pairs_captions",
    ),
]
IMAGE_TEXT = ("data.task=image_text", "data.train={files}/labels.jsonl", "data.val={files}/labels.jsonl")
IMAGE_TEXT += ("data.image_root={files}", "data.labels=[red,blue]", "model.modality=multimodal")
IMAGE_FOLDER = ("data.task=image_folder", "data.train={files}/classes/train", "data.val={files}/classes/train")
IMAGE_FOLDER += ("data.labels=null", "model.modality=image")
UNREAD = ("data.text_columns=[sentence]",)  # FINETUNE_BASE's GLUE columns at their default: other tasks read none
IMAGE_TEXT, IMAGE_FOLDER = IMAGE_TEXT + UNREAD, IMAGE_FOLDER + UNREAD
SHAPES = ("data.task=shapes", "model.modality=image")
FINETUNE_ONLY = [
    ("data.image_root={files}", "data.image_root"),  # a glue task reads no images: was ignored without a word
    ("data.task=audio", "data.task"),
    ("model.modality=video", "model.modality"),
    ("model.modality=image", "model.modality"),  # a text task
    ("model.loss=hinge", "model.loss"),
    ("model.loss=mse", "model.loss"),  # classes
    ("model.loss=binary_cross_entropy", "model.loss"),  # class ids, not scores
    (("data.labels=null", "model.loss=cross_entropy"), "model.loss"),  # regression
    ("model.classifier_hidden_dim=0", "model.classifier_hidden_dim"),
    ("model.classifier_hidden_dim=1000000000000", "model.classifier_hidden_dim"),  # an allocator's traceback
    ("model.classifier_dropout=1.0", "model.classifier_dropout"),
    ("model.classifier_dropout=-0.1", "model.classifier_dropout"),
    ("model.pretrained=null", "model.pretrained"),
    ("model.pretrained=/nowhere/run", "model.pretrained"),
    ("model.pretrained={files}/train.tsv", "model.pretrained"),
    ("model.pretrained={files}/not_a_checkpoint", "model.pretrained"),
    ("model.pretrained={files}/clip_run", "model.pretrained"),  # was a TypeError traceback, run directory taken
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
    ("data.max_text_length=33", "data.max_text_length"),  # the export's 32 text positions: was capped silently
    # labels 0 and 1 read as numbers: was a regression (loss mse, one output) without a word
    (("data.labels=null", "data.train={files}/integer_labels.tsv"), "data.labels"),
    ((*IMAGE_TEXT, "data.labels=null"), "data.labels"),
    ((*IMAGE_TEXT, "data.image_root=null"), "data.image_root"),
    ((*IMAGE_TEXT, "data.image_root=/nowhere/images"), "data.image_root"),
    ((*IMAGE_TEXT, "data.train={files}/broken.jsonl"), "data.train"),
    ((*IMAGE_TEXT, "data.train={files}/missing_images.jsonl"), "data.train"),  # was a RuntimeError at step 1
    ((*IMAGE_TEXT, "data.labels=[red,green]"), "data.train"),  # 'blue' is not a configured label
    ((*IMAGE_TEXT, "model.loss=binary_cross_entropy"), "model.loss"),  # the file holds class labels
    ((*IMAGE_FOLDER, "data.train={files}/train.tsv"), "data.train"),
    ((*IMAGE_FOLDER, "data.val={files}/classes/val"), "data.val"),  # 'green' is not a training class
    ((*IMAGE_FOLDER, "data.val={files}/classes/unreadable"), "data.val"),  # was torch.cat([]) after training
    ((*IMAGE_FOLDER, "data.train={files}/classes/one_class"), "data.train"),
    # the validation sets after data.val, each checked as it is
    ("data.extra_val.dev2=null", "data.extra_val.dev2"),
    ("data.extra_val.dev2=/nowhere/dev.tsv", "data.extra_val.dev2"),
    ("data.extra_val.dev2={files}/unknown_label.tsv", "data.extra_val.dev2"),
    ("data.extra_val.val={files}/dev.tsv", "data.extra_val"),  # data.val's name
    ("data.val_name=''", "data.val_name"),
    ("data.extra_val.dev.2={files}/dev.tsv", "data.extra_val.dev"),  # a dotted name nests a mapping
    ((*IMAGE_FOLDER, "data.extra_val.dev2={files}/classes/val"), "data.extra_val.dev2"),
    ((*IMAGE_FOLDER, "data.extra_val.dev2={files}/classes/unreadable"), "data.extra_val.dev2"),
    ((*SHAPES, "data.extra_val.dev2={files}/dev.tsv"), "data.extra_val"),
    ((*IMAGE_FOLDER, "data.train={files}/empty_dir"), "data.train"),
    ((*SHAPES, "data.shapes_train=0"), "data.shapes_train"),
    ((*SHAPES, "data.shapes_train=1000000000000"), "data.shapes_train"),
    ((*SHAPES, "data.shapes_val=541"), "data.shapes_val"),
    ((*SHAPES, "data.image_size=4"), "data.image_size"),
    ((*SHAPES, "data.image_size=1000000000000"), "data.image_size"),  # was an overflow traceback once started
    ((*SHAPES, "model.modality=text"), "model.modality"),
    # keys the shapes task does not read: it trained on its scenes, data.train and data.labels ignored
    (SHAPES, "data.train"),
    ((*SHAPES, "data.train=null"), "data.val"),
    ((*SHAPES, "data.train=null", "data.val=null"), "data.labels"),
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
    [("flava", *c) for c in SHARED + EVAL + FLAVA_ONLY + IGNORED + STREAMING + VOCAB]
    + [("clip", *c) for c in SHARED + EVAL + CLIP_ONLY + IGNORED + STREAMING + VOCAB]
    + [("finetune", *c) for c in SHARED + FINETUNE_ONLY]
)


def _config(recipe: str, overrides, files: Path, out: Path):
    module = RECIPES[recipe]
    schema = module.FinetuneConfig if recipe == "finetune" else module.TrainConfig
    given = [overrides] if isinstance(overrides, str) else list(overrides)
    arguments = [a.format(files=files) for a in BASE[recipe] + given] + [f"training.output_dir={out}"]
    return load_config(schema, arguments)


def _id(case) -> str:
    recipe, overrides, _ = case
    return f"{recipe}-{overrides if isinstance(overrides, str) else ' '.join(overrides)}"


def test_the_base_configs_are_valid(files, tmp_path):
    for recipe in RECIPES:
        RECIPES[recipe].validate(_config(recipe, [], files, tmp_path / recipe), 1)
    report = RECIPES["finetune"].main(_config("finetune", [], files, tmp_path / "finetune"))
    assert report["steps"] == 2  # the base the bad values change runs


@pytest.mark.parametrize("recipe", ["flava", "clip"])
def test_a_vocabulary_size_past_memory_is_not_refused_for_it(recipe, files, tmp_path):
    """A learnt vocabulary holds what the data gives, at most data.vocab_size: a huge one ran before the memory
    check, and still passes it (the check builds the smallest vocabulary)."""
    RECIPES[recipe].validate(_config(recipe, "data.vocab_size=1000000000000", files, tmp_path / "run"), 1)


@pytest.mark.parametrize("recipe", ["flava", "clip", "finetune"])
def test_validate_alone_refuses_unknown_lr_multipliers(recipe, files, tmp_path):
    """The recipe's validate (before the model, data or run directory) names the key; fine-tuning named it
    only after loading the checkpoint and building the classifier."""
    cfg = _config(recipe, "optim.lr_multipliers.no_such_module=0.5", files, tmp_path / "run")
    with pytest.raises(RECIPES[recipe].ConfigError, match=r"^key 'optim.lr_multipliers': expected names of"):
        RECIPES[recipe].validate(cfg, 1)


@pytest.mark.parametrize("recipe, overrides, key", CASES, ids=[_id(c) for c in CASES])
def test_a_bad_value_is_refused_before_any_work(recipe, overrides, key, files, tmp_path):
    module = RECIPES[recipe]
    out = tmp_path / "run"
    cfg = _config(recipe, overrides, files, out)
    with pytest.raises(module.ConfigError) as caught:
        module.main(cfg)
    message = str(caught.value)
    assert message.startswith(f"key '{key}'") and ": expected " in message and "\n" not in message, message
    assert not out.exists()  # nothing written: the run directory taken is given back as it was (none)


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
        "error: key 'data.train': expected a TSV file with a header holding ['question', 'sentence', 'label'] "
        "(data.columns names those of a file without one) and labels in ['neg', 'pos'], got '{files}/no_label_column.tsv' ({files}/no_label_column.tsv: missing "
        "column(s) ['label']; the header has ['question', 'sentence'])",
    ),
]


@pytest.mark.parametrize(
    "command, expected", COMMANDS, ids=["clip-lr", "flava-texts", "flava-empty", "clip-s3-unstreamed", "finetune"]
)
def test_the_command_line_exits_2_with_one_line(command, expected, files, tmp_path):
    arguments = [a.format(files=files) for a in command]
    result = run_script(  # a process forked with the imports done, in a minimal environment
        arguments[0],
        [*arguments[1:], f"training.output_dir={tmp_path / 'run'}"],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == expected.format(files=files)
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    module = RECIPES["clip"]
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "run" / "checkpoints").parent.mkdir()
    (tmp_path / "run" / "checkpoints").write_text("a file where the checkpoints go")
    for out in (tmp_path / "file", tmp_path / "file" / "below", tmp_path / "run"):
        cfg = load_config(module.TrainConfig, [f"config={CLIP[1]}", f"training.output_dir={out}"])
        with pytest.raises(module.ConfigError, match="key 'training.output_dir': expected a directory this process"):
            module.main(cfg)


@pytest.mark.parametrize("recipe", ["flava", "clip"])
def test_an_output_dir_with_a_name_too_long_is_refused(recipe, tmp_path):
    module = RECIPES[recipe]
    config = (FLAVA if recipe == "flava" else CLIP)[1]
    out = tmp_path / ("x" * 300)  # Path.exists raised OSError (File name too long) inside validate
    cfg = load_config(module.TrainConfig, [f"config={config}", f"training.output_dir={out}"])
    with pytest.raises(module.ConfigError) as caught:
        module.main(cfg)
    assert str(caught.value).startswith("key 'training.output_dir': expected a directory this process can create")
    assert str(caught.value).endswith("(File name too long)'") and "\n" not in str(caught.value)


def test_clip_needs_two_pairs_per_micro_batch(files, tmp_path):
    module = RECIPES["clip"]
    cfg = _config("clip", ("training.global_batch_size=6", "training.grad_accumulation=6"), files, tmp_path / "run")
    with pytest.raises(module.ConfigError) as caught:
        module.validate(cfg, 1)
    assert str(caught.value) == (
        "key 'training.global_batch_size': expected at least 2 pairs per micro-batch, i.e. >= 2 x "
        "training.grad_accumulation (6): the contrastive loss of one pair is 0 with no gradient, got 6"
    )
    # two ranks with one pair each: the loss gathers the features, so every pair has a negative
    two_ranks = ("training.global_batch_size=2", "training.strategy=ddp")
    module.validate(_config("clip", two_ranks, files, tmp_path / "run"), 2)


def test_flava_needs_two_pairs_per_micro_batch_when_the_contrastive_loss_counts(files, tmp_path):
    """The check CLIP makes, shared: FLAVA trained with a global_contrastive loss of 0.0 every step."""
    module = RECIPES["flava"]
    one_pair = ("training.global_batch_size=8", "training.grad_accumulation=8")
    with pytest.raises(module.ConfigError) as caught:
        module.validate(_config("flava", one_pair, files, tmp_path / "run"), 1)
    assert str(caught.value) == (
        "key 'training.global_batch_size': expected at least 2 pairs per micro-batch, i.e. >= 2 x "
        "training.grad_accumulation (8): the contrastive loss of one pair is 0 with no gradient, got 8"
    )
    # without the contrastive loss, or without pairs, one item per micro-batch trains the other losses
    module.validate(_config("flava", (*one_pair, "pretraining.global_contrastive_weight=0"), files, tmp_path), 1)
    module.validate(_config("flava", (*one_pair, "data.shapes.num_pairs=0"), files, tmp_path), 1)


UNREAD = "expected its default, null, since data.source=shapes reads no files"
BOTH_FORMS = (
    "key 'data.files.pairs_shards': expected null when data.files.pairs_root or data.files.pairs_captions is set "
    "(one form of pairs: the shards, or the captions file with the folder of its images), got '{files}/shards/p-0.tar'"
)
PAST_CLAMP = (
    "key 'model.logit_scale_init': expected in [0, 4.60517] (the range the learnt log temperature multiplier is "
    "clamped to), got 4.7"
)


@pytest.mark.parametrize(
    "recipe, overrides, message",
    [
        ("flava", ("data.files.texts=/nowhere.txt",), f"key 'data.files.texts': {UNREAD}, got '/nowhere.txt'"),
        ("clip", ("data.files.pairs_root=/nowhere",), f"key 'data.files.pairs_root': {UNREAD}, got '/nowhere'"),
        (
            "flava",
            (FILES, "data.files.pairs_shards={files}/shards/p-0.tar", "data.files.pairs_root={files}"),
            BOTH_FORMS,
        ),
        (
            "clip",
            (FILES, "data.files.pairs_shards={files}/shards/p-0.tar", "data.files.pairs_root={files}"),
            BOTH_FORMS,
        ),
        ("flava", ("model.logit_scale_init=4.7",), PAST_CLAMP),
        ("clip", ("model.logit_scale_init=4.7",), PAST_CLAMP),
    ],
)
def test_ignored_data_settings_and_an_init_past_the_clamp_are_refused(recipe, overrides, message, files, tmp_path):
    module = RECIPES[recipe]
    with pytest.raises(module.ConfigError) as caught:
        module.validate(_config(recipe, overrides, files, tmp_path / "run"), 1)
    assert str(caught.value) == message.format(files=files)
    module.validate(_config(recipe, ["model.logit_scale_init=4.6"], files, tmp_path / "run"), 1)  # tiny.yaml's


def test_a_mask_block_larger_than_the_masking_budget_is_refused(files, tmp_path):
    module = RECIPES["flava"]
    cfg = _config("flava", ("data.num_masked_patches=5", "data.min_mask_block=6"), files, tmp_path / "run")
    with pytest.raises(module.ConfigError) as caught:
        module.validate(cfg, 1)
    assert str(caught.value) == "key 'data.min_mask_block': expected in [1, data.num_masked_patches = 5], got 6"
    module.validate(_config("flava", ("data.num_masked_patches=5", "data.min_mask_block=5"), files, tmp_path), 1)
    module.validate(_config("flava", ("data.num_masked_patches=0", "data.min_mask_block=6"), files, tmp_path), 1)


@pytest.mark.parametrize("recipe", ["clip", "flava"])
def test_an_entry_of_the_wrong_kind_in_the_output_dir_is_refused_before_any_work(recipe, files, tmp_path):
    module = RECIPES[recipe]
    (tmp_path / "file_model").mkdir()
    (tmp_path / "file_model" / "model").write_text("my notes")  # the export directory goes there
    (tmp_path / "dir_metrics" / "metrics.jsonl").mkdir(parents=True)
    (tmp_path / "dir_arguments" / "model_arguments.json").mkdir(parents=True)  # (a run from a checkpoint writes it)
    for out, entry, fault in (
        (tmp_path / "file_model", "model", "its model is a file, where a run writes a directory"),
        (tmp_path / "dir_metrics", "metrics.jsonl", "its metrics.jsonl is a directory, where a run writes a file"),
        (
            tmp_path / "dir_arguments",
            "model_arguments.json",
            "its model_arguments.json is a directory, where a run writes a file",
        ),
    ):
        with pytest.raises(module.ConfigError) as caught:
            module.main(_config(recipe, [], files, out))
        assert str(caught.value) == (
            "key 'training.output_dir': expected a directory this process can create or write, with no entry of "
            f"another kind where a run writes one, got '{out} ({fault})'"
        )
        assert [p.name for p in out.iterdir()] == [entry]  # nothing written, no lock left
    (tmp_path / "quiet").mkdir()
    (tmp_path / "quiet" / "tensorboard").write_text("not written by a run without TensorBoard")
    module.validate(_config(recipe, ["training.tensorboard=false"], files, tmp_path / "quiet"), 1)


def test_infinite_loss_weights_and_ratios_are_refused_naming_finite(files, tmp_path):
    module = RECIPES["flava"]
    for override, message in (
        (
            "pretraining.itm_weight=inf",
            "key 'pretraining.itm_weight': expected a finite number >= 0, got inf",
        ),
        (
            "data.ratios.texts=inf",
            "key 'data.ratios': expected finite and >= 0 each, and > 0 for one kind the data has (pairs, images, "
            "texts), got {'pairs': 0.7, 'images': 0.15, 'texts': inf}",
        ),
    ):
        with pytest.raises(module.ConfigError) as caught:
            module.validate(_config("flava", [override], files, tmp_path / "run"), 1)
        assert str(caught.value) == message


def test_a_ratio_of_a_kind_without_a_source_is_refused_naming_the_keys_that_give_one(files, tmp_path):
    """It was dropped: the run drew its steps from the other kinds only. A ratio of 0, or one left unset
    (null: its default where the data has the kind, else 0), stays fine."""
    module = RECIPES["flava"]
    streamed = (
        *STREAMED,
        "data.files.pairs_shards={files}/shards/p-{{0..1}}.tar",
        "data.files.texts={files}/train.tsv",
    )
    for overrides, message in (
        (
            ("data.shapes.num_images=0", "data.ratios.images=0.3"),
            "key 'data.ratios.images': expected a source of images for a ratio > 0 (none is configured: set "
            "data.shapes.num_images > 0), or 0, got 0.3",
        ),
        (
            (*streamed, "data.ratios.images=0.3"),
            "key 'data.ratios.images': expected a source of images for a ratio > 0 (none is configured: set "
            "data.files.images_root), or 0, got 0.3",
        ),
        (
            (FILES, "data.files.texts={files}/train.tsv", "data.ratios.pairs=1"),
            "key 'data.ratios.pairs': expected a source of pairs for a ratio > 0 (none is configured: set "
            "data.files.pairs_shards or data.files.pairs_captions), or 0, got 1.0",
        ),
    ):
        with pytest.raises(module.ConfigError) as caught:
            module.validate(_config("flava", overrides, files, tmp_path / "run"), 1)
        assert str(caught.value) == message
    for overrides, ratios in (
        (("data.shapes.num_images=0", "data.ratios.images=0"), {"pairs": 0.7, "images": 0.0, "texts": 0.15}),
        (("data.shapes.num_images=0",), {"pairs": 0.7, "images": 0.0, "texts": 0.15}),
        ((), {"pairs": 0.7, "images": 0.15, "texts": 0.15}),
        ((*streamed, "data.ratios.texts=0.5"), {"pairs": 0.7, "images": 0.0, "texts": 0.5}),
    ):
        cfg = _config("flava", overrides, files, tmp_path / "run")
        module.validate(cfg, 1)
        assert module.run_ratios(cfg.data) == ratios


def test_codebook_weights_are_checked_against_the_codebook_section(files, tmp_path):
    module = RECIPES["flava"]
    cfg = _config("flava", [], files, tmp_path / "run")
    path = tmp_path / "dvae.safetensors"
    save_state_dict(module.build_codebook(cfg, seeded=False).state_dict(), path)
    fitting = _config("flava", [f"codebook.pretrained={path}"], files, tmp_path / "run")
    module.validate(fitting, 1)
    assert module.build_codebook(fitting) is not None  # the weights the check passed do load
    wider = _config("flava", [f"codebook.pretrained={path}", "codebook.hidden_dim=16"], files, tmp_path / "run")
    with pytest.raises(module.ConfigError) as caught:
        module.validate(wider, 1)
    message = str(caught.value)
    assert message.startswith(
        f"key 'codebook.pretrained': expected a checkpoint that reads and fits the codebook section, got \"{path} ("
    )
    assert "groups.0.0.conv4.bias: checkpoint (8,) vs model (16,)" in message and "\n" not in message, message


def test_finetuning_takes_a_file_url_of_a_checkpoint_directory(files, tmp_path):
    """load_pretrained took one, and the recipe's check refused it as no directory."""
    module = RECIPES["finetune"]
    url = (Path(files) / "export").as_uri()
    module.validate(_config("finetune", [f"model.pretrained={url}"], files, tmp_path / "run"), 1)
    for bad in ("http://127.0.0.1:9/export", (Path(files) / "nowhere").as_uri()):
        with pytest.raises(
            module.ConfigError, match="^key 'model.pretrained': expected a checkpoint directory, or a file:// URL"
        ):
            module.validate(_config("finetune", [f"model.pretrained={bad}"], files, tmp_path / "run"), 1)


def test_finetuning_a_clip_checkpoint_is_refused_naming_its_family(files, tmp_path):
    module = RECIPES["finetune"]
    with pytest.raises(module.ConfigError) as caught:
        module.validate(_config("finetune", [f"model.pretrained={files}/clip_run"], files, tmp_path / "run"), 1)
    assert str(caught.value) == (
        f"key 'model.pretrained': expected a FLAVA checkpoint directory, got '{files}/clip_run (a CLIP checkpoint: "
        "examples/clip/finetune.py fine-tunes one)'"
    )


def test_a_validation_split_without_a_usable_item_is_refused_before_training(files, tmp_path):
    module = RECIPES["finetune"]
    out = tmp_path / "run"
    cfg = _config("finetune", [*IMAGE_FOLDER, "data.val={files}/classes/unreadable"], files, out)
    with pytest.raises(module.ConfigError) as caught:
        module.main(cfg)
    assert str(caught.value) == (
        "key 'data.val': expected a split with a usable item to evaluate, got "
        f"'{files}/classes/unreadable (none of its 3 items reads; the first: sample 0: red/0.png: unreadable image "
        "(OSError: Truncated File Read))'"
    )
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()


def test_training_data_without_a_usable_row_leaves_no_run_directory(files, tmp_path, monkeypatch):
    """data.train passes validate (an existing file) but none of its rows reads: the run took its directory
    before reading the data, and left it behind (holding only .run.lock), parents and all; and it had loaded
    the pretrained weights first."""
    module = RECIPES["finetune"]
    loaded, load = [], module.load_pretrained
    monkeypatch.setattr(module, "load_pretrained", lambda *a, **k: loaded.append(a) or load(*a, **k))
    (tmp_path / "bad_rows.tsv").write_text("question\tsentence\tlabel\n" + "one field\n" * 3)
    for train, key in ((tmp_path / "bad_rows.tsv", "data.train"), (files / "header_only.tsv", "data.train")):
        out = tmp_path / "runs" / "glue" / "run"
        with pytest.raises(module.ConfigError, match=f"^key '{key}': expected "):
            module.main(_config("finetune", [f"data.train={train}"], files, out))
        assert not (tmp_path / "runs").exists() and loaded == []  # the directories the run made are gone
    (tmp_path / "mine").mkdir()  # a directory the user made stays, as empty as it was
    with pytest.raises(module.ConfigError, match="^key 'data.train': expected a split with usable items"):
        module.main(_config("finetune", [f"data.train={tmp_path / 'bad_rows.tsv'}"], files, tmp_path / "mine"))
    assert list((tmp_path / "mine").iterdir()) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("the user's")  # and one holding the user's files, only those
    with pytest.raises(module.ConfigError, match="^key 'data.train': expected a split with usable items"):
        module.main(_config("finetune", [f"data.train={tmp_path / 'bad_rows.tsv'}"], files, tmp_path / "notes"))
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["notes.txt"]
    module.main(_config("finetune", [], files, tmp_path / "mine"))  # and holds the next run


KARPATHY = ("data.source=files", "data.files.pairs_captions={files}/dataset_coco.json", "data.files.pairs_root={files}")
ABSOLUTE = ("data.source=files", "data.files.pairs_captions={files}/absolute.csv")
BLIP = (
    "data.source=files",
    "data.files.pairs_captions={files}/coco_karpathy_test.json",
    "data.files.pairs_root={files}",
)
SPLIT = "expected null, or a non-empty list of names of splits data.files.pairs_captions holds (a Karpathy split file"
SPLITS = "its splits: ['restval', 'test', 'train', 'val']"
COLUMN = (
    "expected null, or the key or column of the {} in data.files.pairs_captions (a .jsonl, .csv or .tsv, or a .json "
    "list of captions)"
)


@pytest.mark.parametrize(
    "recipe, overrides, message",
    [
        (
            "clip",
            (
                FILES,
                "data.files.pairs_root={files}",
                "data.files.pairs_captions={files}/labels.jsonl",
                "data.files.pairs_split=[train]",
            ),
            "key 'data.files.pairs_split': expected null for {files}/labels.jsonl (splits are those of Karpathy's split "
            "files, .json, or of a .parquet file's split column), got ['train']",
        ),
        (
            "clip",
            (*KARPATHY, "data.files.pairs_split=[train,restvl]"),  # one name the file lacks: its images were dropped
            f"key 'data.files.pairs_split': {SPLIT}, .json, or a .parquet file's split column), got ['train', 'restvl'] (split must name splits of the "
            f"file, 'restvl' is not a split of '{{files}}/dataset_coco.json' ({SPLITS}))",
        ),
        (
            "flava",
            (*KARPATHY, "data.files.pairs_split=[training]"),
            f"key 'data.files.pairs_split': {SPLIT}, .json, or a .parquet file's split column), got ['training'] (split must name splits of the file, none "
            f"of ['training'] is a split of '{{files}}/dataset_coco.json' ({SPLITS}))",
        ),
        (
            "clip",
            (*BLIP, "data.files.pairs_split=[test]"),
            f"key 'data.files.pairs_split': {SPLIT}, .json, or a .parquet file's split column), got ['test'] (split is for Karpathy's split files, "
            "'{files}/coco_karpathy_test.json' is a list of captions)",
        ),
        (
            "flava",
            (*BLIP, "data.files.pairs_text_key=text"),  # no object has it
            f"key 'data.files.pairs_text_key': {COLUMN.format('captions')}, got 'text' (captions must list at least one "
            "well-formed image-caption pair, none of the 1 entries of '{files}/coco_karpathy_test.json' is ([0]: "
            "missing key 'text'))",
        ),
        (
            "clip",
            (*KARPATHY, "data.files.pairs_text_key=raw"),
            f"key 'data.files.pairs_text_key': {COLUMN.format('captions')}, got 'raw' (image_key and text_key are for "
            ".jsonl, .csv and .tsv files and JSON lists of captions, '{files}/dataset_coco.json' is Karpathy's split "
            "file)",
        ),
        (
            "clip",
            (*ABSOLUTE, "data.files.pairs_image_key=filepath", "data.files.pairs_text_key=caption"),
            f"key 'data.files.pairs_text_key': {COLUMN.format('captions')}, got 'caption' (captions must start with a "
            "comma-separated header row naming the columns 'filepath' and 'caption'; line 1 of "
            "'{files}/absolute.csv' is ['filepath', 'title'])",
        ),
        (
            "flava",
            (*ABSOLUTE, "data.files.pairs_text_key=image"),  # the image column's default name
            "key 'data.files.pairs_text_key': expected a key other than data.files.pairs_image_key's ('image'), got "
            "'image'",
        ),
        (
            "flava",
            (*ABSOLUTE, "data.files.pairs_root={files}"),  # every path absolute: no root wanted
            "key 'data.files.pairs_root': expected the folder the image paths of data.files.pairs_captions are "
            "relative to, or null when they are absolute, got '{files}' (captions: every image path of "
            "'{files}/absolute.csv' is absolute (e.g. '{files}/0.png'); give no root (root=None; the retrieval "
            "command without --images) to read a file of absolute paths)",
        ),
        (
            "clip",
            (FILES, "data.files.pairs_shards={files}/shards/p-0.tar", "data.files.pairs_split=[train]"),
            "key 'data.files.pairs_split': expected null without data.files.pairs_captions, got ['train']",
        ),
        (
            "clip",
            ("data.files.pairs_image_key=url",),  # data.source=shapes
            "key 'data.files.pairs_image_key': expected its default, null, since data.source=shapes reads no files, "
            "got 'url'",
        ),
    ],
)
def test_the_captions_keys_are_refused_naming_the_key_at_fault(recipe, overrides, message, files, tmp_path):
    """pairs_split, pairs_image_key, pairs_text_key and pairs_root against the captions file they apply to,
    refused before any work in the recipes' one line naming the key that answers for it."""
    module = RECIPES[recipe]
    out = tmp_path / "run"
    with pytest.raises(module.ConfigError) as caught:
        module.main(_config(recipe, overrides, files, out))
    assert str(caught.value) == message.format(files=files)
    assert not out.exists()


def test_clip_class_names_the_tokenizer_reads_as_one_name_data_class_names(tmp_path):
    """examples/clip/finetune.py: ``data.class_names=[Red, red]`` (one prompt once lower-cased) was blamed on
    ``model.templates``; the names are at fault, nothing written."""
    from tests.examples.test_clip_finetune import FOLDERS, SHAPES, finetune, write_tiny_clip_export

    export = write_tiny_clip_export(tmp_path / "export")
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "train" / name / "0.png")
    out = tmp_path / "run"
    overrides = [f"model.pretrained={export}", f"training.output_dir={out}", *SHAPES, *FOLDERS]
    overrides += [
        f"data.train={tmp_path / 'train'}",
        f"data.val={tmp_path / 'train'}",
        "data.class_names=[Red, red]",
        "training.max_steps=3",
    ]
    with pytest.raises(ConfigError) as caught:
        finetune.main(load_config(finetune.FinetuneConfig, overrides))
    message = str(caught.value)
    assert message.startswith(
        "key 'data.class_names': expected class names the checkpoint's tokenizer tells apart (data.class_names, else "
        "the folder names), got ['Red', 'red'] (class_names must differ in what the tokenizer keeps, got 'Red' and "
        "'red': "
    ), message
    assert "\n" not in message and not out.exists()
