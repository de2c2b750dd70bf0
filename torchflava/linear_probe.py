"""Linear probe of a FLAVA or CLIP checkpoint's frozen image features (the FLAVA/CLIP protocol).

    python -m torchflava.linear_probe --checkpoint runs/tiny --shapes
    python -m torchflava.linear_probe --checkpoint runs/tiny/checkpoints/step_2000 --shapes  # a run's step-2000 checkpoint
    python -m torchflava.linear_probe --checkpoint /models/flava-full --train DIR --val DIR --test DIR
    python -m torchflava.linear_probe --checkpoint DIR --train imagenet/train --val VAL --test imagenet/val --test-labels LOC_val_solution.csv
    python -m torchflava.linear_probe --checkpoint DIR --train food101/data/train-*.parquet --val VAL.parquet --test food101/data/validation-*.parquet
    python -m torchflava.linear_probe --checkpoint DIR --train cifar-10-batches-py/data_batch_{1,2,3,4} --val cifar-10-batches-py/data_batch_5 --test cifar-10-batches-py/test_batch
    python -m torchflava.linear_probe --checkpoint DIR --train 'cifar-100-python/train[:45000]' --val 'cifar-100-python/train[45000:]' --test cifar-100-python/test
    python -m torchflava.linear_probe --checkpoint file:///models/flava-full --shapes --batch-size 32
    python -m torchflava.linear_probe --checkpoint ~/.cache/clip/ViT-B-32.pt --tokenizer bpe_simple_vocab_16e6.txt.gz --shapes

The feature is the image encoder's CLS after its final LayerNorm (no projection), of images
preprocessed as the checkpoint states (``preprocessor_config.json``, see
:mod:`torchflava.pretrained`). A logistic regression is fitted for each L2 penalty on ``--train``,
the penalty with the best ``--val`` accuracy is kept, the probe is refitted on train + val and
scored on ``--test``. Folders hold one sub-folder per class, or, with ``--train-labels``/``--val-labels``/
``--test-labels``, their images flat beside a file labelling them, as ImageNet's validation set is distributed
(Kaggle's ``LOC_val_solution.csv``, or ``FILE<TAB>CLASS`` / ``FILE,CLASS`` lines: see
:class:`~torchflava.data.image_labels.LabelledImageFolder`; the classes are the training split's, its
sub-folders' or the classes its labels file writes, sorted; a named image that is absent is skipped as an
unreadable one is, an image left unnamed is left out, each with a warning), or parquet files as the Hugging Face
Hub serves a dataset (a glob, a folder of them or several files: images and class ids, the classes those of the
training split's ``ClassLabel``; ``--image-key``/``--label-key`` name other columns; needs pyarrow), or tar shards as
CLIP_benchmark serves a dataset (a split's folder, ``wds_cifar10/train``), or the split files torchvision's CIFAR-10/100
and MNIST-family datasets download (``cifar-10-batches-py/data_batch_1``..., ``cifar-100-python/train``,
``MNIST/raw/train-images-idx3-ubyte``: a split's files, not the dataset's folder, or a file's rows as a slice's,
``'cifar-100-python/train[45000:]'``, a validation split held out of a train split that is one file; the classes the
training split's meta file's, or torchvision's names of the MNIST family); ``--shapes`` uses the built-in shapes
task (train and validation from the training world, test = the held-out split). Images are encoded
``--batch-size`` at a time (the features depend on it in fp32's last bits only: ~4e-7, measured).
"""

import argparse
import os
from pathlib import Path
import sys
from types import MappingProxyType
from typing import Optional, Sequence

import torch
from torch import Tensor

from torchflava.data.finetuning import ImageClassFolder, ShapesClassification
from torchflava.data.image_labels import LabelledImageFolder
from torchflava.data.parquet import ParquetError, ParquetImages, is_parquet, parquet_hint
from torchflava.data.readers import IMAGE_EXTENSIONS
from torchflava.data.samples import readable_chunks
from torchflava.data.torchvision_files import TorchvisionFilesError, TorchvisionImages, is_torchvision_files
from torchflava.data.wds import WdsError, WdsImages, is_tar_shards
from torchflava.evaluation.linear_probe import DEFAULT_L2, LinearProbeResult, linear_probe
from torchflava.evaluation.metrics import percent
from torchflava.modules.encoders import CLS_POSITION
from torchflava.pretrained import (
    Pretrained,
    add_checkpoint_argument,
    add_dtype_argument,
    add_lone_file_arguments,
    command_inputs,
    command_pretrained,
)
from torchflava.utils.cli import (
    command_parser,
    finish_command,
    output_file,
    positive_int,
    refuse_overwritten_inputs,
    run_command,
)
from torchflava.utils.memory import keep_freed_memory
from torchflava.zero_shot import LABELLED_READERS, LabelledImages

DEFAULT_BATCH_SIZE = 128  # images encoded at a time (--batch-size)
# --shapes: the images of each split (probe_shapes's defaults; read-only)
SHAPES_SPLITS = MappingProxyType({"train": 3000, "val": 1000, "test": 540})
SPLITS = ("train", "val", "test")  # the image sets a folder (and a labels file) may give


@torch.no_grad()
def cls_features(
    pretrained: Pretrained, source, *, batch_size: int = DEFAULT_BATCH_SIZE, where: str = "the split"
) -> tuple[Tensor, Tensor, list[str]]:
    """(N, D) frozen image CLS features and (N,) labels of a labelled image source; unusable items skipped.
    The images are encoded on the model's device, and the features stay there (the probe fits on them).

    Returns:
        tuple[Tensor, Tensor, list[str]]: features, labels, and why each skipped item was (naming its file).
    """
    transform = pretrained.image_transform  # the checkpoint's own preprocessing
    encoder = pretrained.model.image_encoder
    device = next(encoder.parameters()).device  # (a model moved to an accelerator: its inputs follow)
    features, labels, skipped = [], [], []
    for chunk in readable_chunks(source.__getitem__, range(len(source)), batch_size, skipped):
        pixels = torch.stack([transform(sample.image) for _, sample in chunk]).to(device)
        with pretrained.precision():
            states = encoder(pixels, output_positions=CLS_POSITION, return_pooled=False).last_hidden_state
        features.append(states[:, 0].float())
        labels += [int(sample.label) for _, sample in chunk]
    if not features:
        raise ValueError(f"{where}: none of its {len(source)} images is readable (the first: {skipped[:1]})")
    return torch.cat(features), torch.tensor(labels), skipped


def untrained_classes(classes: Sequence[str], train_labels: Tensor) -> list[str]:
    """The classes of which ``train_labels`` (the readable training images' class ids) hold no image: an
    empty class folder, or one whose images are all unreadable."""
    counts = torch.bincount(train_labels.cpu(), minlength=len(classes)).tolist()
    return [name for name, count in zip(classes, counts) if count == 0]


def probe_shapes(
    pretrained: Pretrained,
    *,
    num_train: int = SHAPES_SPLITS["train"],
    num_val: int = SHAPES_SPLITS["val"],
    num_test: int = SHAPES_SPLITS["test"],
    image_size: int = 64,
    l2_values: Sequence[float] = DEFAULT_L2,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> LinearProbeResult:
    """Linear probe on the built-in shapes task (train/val drawn from the training world, test held out),
    the images encoded ``batch_size`` at a time."""
    train = ShapesClassification("pairs", num_train + num_val, image_size=image_size)
    features, labels, _ = cls_features(pretrained, train, batch_size=batch_size)
    test = cls_features(
        pretrained, ShapesClassification("test", num_test, image_size=image_size), batch_size=batch_size
    )
    return linear_probe(
        (features[:num_train], labels[:num_train]),
        (features[num_train:], labels[num_train:]),
        test[:2],
        num_classes=len(train.classes),
        l2_values=l2_values,
    )


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = command_parser("torchflava.linear_probe", __doc__)
    add_checkpoint_argument(parser)
    parser.add_argument("--shapes", action="store_true", help="the built-in shapes task")
    for name in SPLITS:  # (several values: parquet files, as a shell expands data/train-*.parquet)
        parser.add_argument(
            f"--{name}",
            nargs="+",
            help="folder of class sub-folders, or parquet files as the Hugging Face Hub gives them (a glob, a folder "
            "of them, or several files), or webdataset tar shards as CLIP_benchmark gives them (a split folder, "
            "wds_cifar10/train, or a glob or brace pattern of .tar files), or torchvision's CIFAR or MNIST-family "
            "split files (cifar-10-batches-py/data_batch_1 ..., MNIST/raw/train-images-idx3-ubyte), or a file's rows "
            "('cifar-100-python/train[45000:]')",
        )
    parser.add_argument("--image-key", help="the parquet splits' image column (default: their Image feature's)")
    parser.add_argument(
        "--label-key", help="the parquet splits' column of class ids, or of class names (default: their ClassLabel one)"
    )
    for name in SPLITS:
        parser.add_argument(
            f"--{name}-labels",
            help=f"file labelling the images of a flat --{name} folder: Kaggle's LOC_val_solution.csv, or "
            "FILE<TAB>CLASS or FILE,CLASS lines",
        )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images encoded at a time [{DEFAULT_BATCH_SIZE}]",
    )
    add_dtype_argument(parser)
    add_lone_file_arguments(parser)
    parser.add_argument(
        "--json", type=output_file, help="also write the report here (weights: the file or training checkpoint probed)"
    )
    args = parser.parse_args(argv)
    parquet = {}  # split -> its parquet files' values
    shards = {}  # split -> its tar shards' values (CLIP_benchmark's wds_cifar10/train)
    tvfiles = {}  # split -> its torchvision files' values (cifar-10-batches-py/data_batch_1 ...)
    for name in SPLITS:
        values = getattr(args, name)
        if values is not None and any(is_parquet(value) for value in values):
            parquet[name] = values
            setattr(args, name, " ".join(values))  # (the split as given, for its messages)
        elif values is not None and any(is_tar_shards(value) for value in values):
            shards[name] = values
            setattr(args, name, " ".join(values))
        elif values is not None and any(is_torchvision_files(value) for value in values):
            tvfiles[name] = values
            setattr(args, name, " ".join(values))
        elif values is not None and len(values) > 1:
            parser.error(f"argument --{name}: expected one folder, or parquet files, got {len(values)} values")
        elif values is not None:
            setattr(args, name, values[0])
    if not parquet and (args.image_key is not None or args.label_key is not None):
        option = "--image-key" if args.image_key is not None else "--label-key"
        parser.error(f"argument {option}: for parquet --train/--val/--test only")
    folders = {name: getattr(args, name) for name in SPLITS if getattr(args, name) is not None}
    labels = {name: getattr(args, f"{name}_labels") for name in SPLITS if getattr(args, f"{name}_labels") is not None}
    for name, file in labels.items():
        if name in parquet:
            parser.error(f"argument --{name}-labels: not with parquet --{name} (their label column labels the images)")
        if name in shards:
            parser.error(f"argument --{name}-labels: not with tar shard --{name} (their .cls members label the images)")
        if name in tvfiles:
            parser.error(f"argument --{name}-labels: not with torchvision's --{name} (their labels label the images)")
        if name not in folders:
            parser.error(f"argument --{name}-labels: labels the images of --{name}, which was not given")
        if not Path(file).is_file():
            parser.error(f"argument --{name}-labels: expected a labels file, got {file!r} (not a file)")
    if args.shapes and folders:  # (the shapes task has its own splits: the folders would be ignored)
        parser.error(f"argument --shapes: the built-in task, not with {', '.join('--' + n for n in folders)}")
    if not args.shapes and not (args.train and args.val):
        parser.error("give --shapes, or --train and --val (and optionally --test) class folders")
    for name, folder in folders.items():  # before the checkpoint is loaded
        if name not in parquet and name not in shards and name not in tvfiles and not Path(folder).is_dir():
            parser.error(f"argument --{name}: expected a folder of class sub-folders, got {folder!r} (not a directory)")
    seen = {}  # real folder -> the first option naming it
    for name, folder in folders.items():  # (--val = --train picked the penalty on the training images, and
        # --test = --val scored the refit on images it was fitted on: accuracies inflated, silently)
        if name in parquet or name in shards or name in tvfiles:  # (their files compared once listed)
            continue
        real = os.path.realpath(folder)
        if real in seen and name in labels and seen[real] in labels:  # (one folder, two labels files: checked below)
            continue
        if real in seen:
            parser.error(
                f"argument --{name}: expected another folder than --{seen[real]}'s, got {folder!r} (the splits "
                f"must not share images)"
            )
        seen[real] = name
    split = {}  # the class folders, listed (not read) before the checkpoint is loaded and any feature extracted
    for name, folder in folders.items():
        classes = None if name == "train" else split["train"].classes
        if name in parquet:
            split[name] = _parquet_split(parser, args, name, parquet[name], classes, split)
            continue
        if name in shards:
            split[name] = _shard_split(parser, name, shards[name], classes, split)
            continue
        if name in tvfiles:
            split[name] = _torchvision_split(parser, name, tvfiles[name], classes, split)
            continue
        try:
            if name in labels:
                split[name] = LabelledImageFolder(folder, labels[name], classes)
            else:
                split[name] = ImageClassFolder(folder, classes)
        except ValueError as error:  # (it names its argument, root: the option is what the user gave)
            if str(error).startswith("root must hold a file ending in"):  # (it named root, as the folder's reason)
                parser.error(
                    f"argument --{name}: expected a folder of class sub-folders, got {folder!r} (no file ending in "
                    f"one of {', '.join(IMAGE_EXTENSIONS)} under it{parquet_hint(folder)})"
                )
            option = f"--{name}-labels" if name in labels else f"--{name}"
            parser.error(f"argument {option}: {str(error).removeprefix('root: ').removeprefix('labels: ')}")
        if name in labels:
            for warning in split[name].warnings(f"--{name}-labels", f"--{name}"):
                print(warning, file=sys.stderr)
            shared = _shared_images(split, folders, name)
            if shared is not None:
                parser.error(
                    f"argument --{name}-labels: expected other images than --{shared[0]}-labels's, got {shared[1]} of "
                    f"them (first {shared[2]!r}; the splits must not share images)"
                )
        if name == "train" and len(split[name].classes) < 2:  # (num_classes' error, after every split's features)
            option, what = ("--train-labels", "classes") if name in labels else ("--train", "class sub-folders")
            source = labels[name] if name in labels else folder
            parser.error(
                f"argument {option}: expected at least 2 {what}, got {len(split[name].classes)} "
                f"({split[name].classes} in {source!r})"
            )
    # --json written over a file read (a parquet file, a shard or its dataset's class names, a labels file, the
    # weights) would lose it: refused before the checkpoint is loaded
    read = {f"--{name}-labels": [file] for name, file in labels.items()}
    for name, source in split.items():
        if isinstance(source, LABELLED_READERS):
            read[f"--{name}"] = source.files if isinstance(source, ParquetImages) else source.dataset_files
    read["--checkpoint"] = [args.checkpoint] if os.path.isfile(args.checkpoint) else []
    read["--tokenizer"] = [args.tokenizer] if args.tokenizer is not None and os.path.isfile(args.tokenizer) else []
    refuse_overwritten_inputs(parser, {"--json": args.json}, read)
    pretrained = command_pretrained(args)  # (a weights file alone: its --tokenizer, and --activation)
    skipped, counts = {}, {}  # split -> why each unreadable image was left out; split -> the images probed
    if args.shapes:
        counts = dict(SHAPES_SPLITS)  # (drawn, never unreadable: none skipped in any split, as folders say it)
        skipped = {name: [] for name in counts}
        sizes = {f"num_{name}": count for name, count in counts.items()}
        result = probe_shapes(pretrained, **sizes, batch_size=args.batch_size)
        classes = ShapesClassification.classes
    else:
        classes = split["train"].classes
        features = {}
        for name, source in split.items():
            where = f"--{name} {folders[name]}"
            vectors, labels, skipped[name] = cls_features(pretrained, source, batch_size=args.batch_size, where=where)
            features[name], counts[name] = (vectors, labels), len(labels)
        result = linear_probe(features["train"], features["val"], features.get("test"), num_classes=len(classes))
        untrained = untrained_classes(classes, features["train"][1])
        if untrained:  # (the probe can never predict them: their val and test images all count as wrong)
            print(
                f"warning: no readable --train image in the class folder(s) {untrained}: the probe never predicts "
                f"them, and their --val/--test images count as wrong",
                file=sys.stderr,
            )
    report = {
        "l2": result.l2,
        "val_accuracy": {str(k): v for k, v in result.val_accuracy.items()},
        "test_accuracy": result.test_accuracy,
        "test_mean_per_class_accuracy": result.test_mean_per_class_accuracy,
        **({} if result.test_top5_accuracy is None else {"test_top5_accuracy": result.test_top5_accuracy}),
        "chance": 1 / len(classes),
        "classes": list(classes),  # (in label order, as zero_shot's --json lists its classes: sorted folders here)
        # split -> the images probed, and the unreadable ones left out (as the other commands' num_inputs, skipped
        # and skipped_reasons, split by split)
        "num_inputs": counts,
        "skipped": {name: len(reasons) for name, reasons in skipped.items()},
        "skipped_reasons": skipped,
        **command_inputs(args, pretrained),  # what was probed (and a weights file alone's --tokenizer, --activation)
    }
    print(summary_line(result, report))
    return finish_command(report, [reason for reasons in skipped.values() for reason in reasons], args.json)


def _parquet_split(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    name: str,
    values: list[str],
    classes: Optional[list[str]],
    split: dict,
) -> ParquetImages:
    """Split ``name``'s parquet files (their labels read and checked, no image) with ``classes`` (the training
    split's; None for it: its ClassLabel's, else its class ids 0..max); exits 2 naming the option where they are
    refused, unlabelled, or share a file with an earlier split."""
    option = {"paths": f"--{name}", "image_key": "--image-key", "label_key": "--label-key", "classes": f"--{name}"}
    try:
        source = ParquetImages(values, image_key=args.image_key, label_key=args.label_key, classes=classes)
    except ParquetError as error:
        extra = " (the classes of --train)" if error.argument == "classes" else ""
        parser.error(f"argument {option[error.argument]}: {error.reason}{extra}")
    except ImportError as error:  # (pyarrow, an optional dependency)
        parser.error(f"argument --{name}: {error}")
    if source.labels is None:
        reason = source.unlabelled or "parquet files without a label column (--label-key names it)"
        parser.error(f"argument --{name}: expected labelled images, got {reason}")
    train = split.get("train")
    trained = getattr(train, "label_names", None)  # (the ClassLabel names of parquet --train)
    what = "the ClassLabel names of --train's files, in their id order"
    if isinstance(train, ParquetImages) and trained is None and train.classes != _id_names(len(train.classes)):
        # (--train's label column names its classes, sorted: a ClassLabel here in another order was taken by id)
        trained, what = train.classes, "ClassLabel names in the order of --train's classes (its label names, sorted)"
    if name != "train" and trained is not None and source.label_names not in (None, trained):
        # (as many names: ParquetImages refused another number; the ids were taken as --train's classes)
        first = next(i for i, (a, b) in enumerate(zip(source.label_names, trained)) if a != b)
        parser.error(
            f"argument --{name}: expected {what}, got class id {first} named {source.label_names[first]!r} here and "
            f"{trained[first]!r} in --train"
        )
    return _labelled_split(parser, name, source, source.labels, split)  # (no ClassLabel names: ids are classes)


def _id_names(count: int) -> list[str]:
    """The class names of a split whose labels are ids alone: ``"0"`` to ``str(count - 1)``."""
    return [str(i) for i in range(count)]


def _shard_split(
    parser: argparse.ArgumentParser, name: str, values: list[str], classes: Optional[list[str]], split: dict
) -> WdsImages:
    """Split ``name``'s tar shards (their ``.cls`` read and checked, no image) with ``classes`` (the training
    split's; None for it: its dataset's ``classnames.txt``, else its class ids 0..max); exits 2 naming the option
    where they are refused, a dataset root is given for a split, or they share a shard with an earlier split."""
    try:
        source = WdsImages(values, classes=classes)
    except WdsError as error:
        extra = " (the classes of --train)" if error.argument == "classes" and classes is not None else ""
        parser.error(f"argument --{name}: {error.reason}{extra}")
    if source.taken:  # (a root's test/ split for --train would probe on the test images)
        parser.error(
            f"argument --{name}: expected a split's shards, got a dataset root ({source.taken[0]}): give its split "
            "folder, e.g. wds_cifar10/train"
        )
    known = [label for label in source.labels if label is not None]
    if not known:
        parser.error(f"argument --{name}: expected labelled images, got tar shards without a .cls member")
    return _labelled_split(parser, name, source, known, split)  # (no classnames.txt: ids are classes)


def _torchvision_split(
    parser: argparse.ArgumentParser, name: str, values: list[str], classes: Optional[list[str]], split: dict
) -> TorchvisionImages:
    """Split ``name``'s torchvision CIFAR or MNIST-family files (read and checked) with ``classes`` (the training
    split's; None for it: the dataset's, else its class ids 0..9); exits 2 naming the option where they are refused,
    a dataset folder is given for a split (which split would be a guess), or they share a file with an earlier
    split."""
    try:
        source = TorchvisionImages(values, classes=classes)
    except TorchvisionFilesError as error:
        extra = " (the classes of --train)" if error.argument == "classes" and classes is not None else ""
        parser.error(f"argument --{name}: {error.reason}{extra}")
    if source.taken:  # (its test split, as the other commands take it, for --train would probe on the test images)
        example = {
            "CIFAR-10": "data_batch_1 ... data_batch_4, and data_batch_5 for --val",
            "CIFAR-100": "'train[:45000]', and 'train[45000:]' for --val",
        }.get(source.kind, "'train-images-idx3-ubyte[:50000]', and 'train-images-idx3-ubyte[50000:]' for --val")
        parser.error(
            f"argument --{name}: expected a split's files, got the dataset folder {source.root}: give its files, "
            f"e.g. {example}"
        )
    return _labelled_split(parser, name, source, source.labels, split)


def _labelled_split(
    parser: argparse.ArgumentParser,
    name: str,
    source: LabelledImages,
    labels: list[int],
    split: dict,
) -> LabelledImages:
    """``source``, split ``name``'s labelled files, its classes its class ids 0..max where they have no names
    (``labels``: its known class ids), its warnings printed; exits 2 naming the option where the training split has
    fewer than two classes or the split shares a file with an earlier one."""
    if source.classes is None:
        source.classes = _id_names(max(labels) + 1)
    if name == "train" and len(source.classes) < 2:
        parser.error(f"argument --train: expected at least 2 classes, got {len(source.classes)} ({source.classes})")
    for other, earlier in split.items():
        if isinstance(source, TorchvisionImages) and isinstance(earlier, TorchvisionImages):  # (rows of one file)
            shared = source.shared_rows(earlier)
            if shared is not None:
                parser.error(
                    f"argument --{name}: expected other images than --{other}'s, got {shared} (the splits must not "
                    "share images)"
                )
            continue
        common = sorted(set(getattr(earlier, "files", ())) & set(source.files))
        if common:
            parser.error(
                f"argument --{name}: expected other files than --{other}'s, got {common[0]!r} (the splits must not "
                "share images)"
            )
    for warning in source.warnings:
        print(warning, file=sys.stderr)
    return source


def _shared_images(split: dict, folders: dict, name: str) -> Optional[tuple[str, int, str]]:
    """The earlier split labelling images of split ``name``'s folder too (two labels files of one folder), how
    many, and the first; None where none does."""
    here = split[name]
    for other, source in split.items():
        if other == name or os.path.realpath(folders[other]) != os.path.realpath(folders[name]):
            continue
        mine = {here.relative_path(i) for i in range(len(here) - len(here.missing))}
        theirs = [source.relative_path(i) for i in range(len(source) - len(source.missing))]
        common = [file for file in theirs if file in mine]
        if common:
            return other, len(common), common[0]
    return None


def summary_line(result: LinearProbeResult, report: dict) -> str:
    """The command's summary: the images probed, the penalty and its accuracies, chance beside the accuracy it
    compares with (the test one, else the validation one) as the zero-shot and classify commands print it."""
    counts = ", ".join(f"{count} {name}" for name, count in report["num_inputs"].items())
    skipped = sum(report["skipped"].values())
    line = f"{counts} images, {skipped} unreadable skipped; chosen L2 {result.l2:g}: validation accuracy "
    line += percent(result.val_accuracy[result.l2])
    chance = f" (chance {percent(report['chance'])})"
    if result.test_accuracy is None:
        return line + chance
    line += f"; test accuracy {percent(result.test_accuracy)}{chance}"
    line += f", mean per class {percent(result.test_mean_per_class_accuracy)}"
    if result.test_top5_accuracy is not None:
        line += f", top-5 {percent(result.test_top5_accuracy)}"
    return line


if __name__ == "__main__":
    keep_freed_memory()  # a command's own process: freed activations stay for the next batch (utils.memory)
    run_command(main)
