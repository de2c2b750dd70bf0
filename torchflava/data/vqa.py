r"""VQA v2 as it is distributed (the official question and annotation JSON files, COCO's image folders) ->
the files the fine-tuning recipe reads: a training and a validation jsonl of soft answer scores, the answer
vocabulary, a ready fine-tuning config, and a questions-only jsonl per unannotated split for the classify command.

    python -m torchflava.data.vqa --images coco --out data/vqa \
        --questions v2_OpenEnded_mscoco_train2014_questions.json \
        --annotations v2_mscoco_train2014_annotations.json \
        --val-questions v2_OpenEnded_mscoco_val2014_questions.json \
        --val-annotations v2_mscoco_val2014_annotations.json \
        --test-questions v2_OpenEnded_mscoco_test-dev2015_questions.json
    python examples/flava/finetune.py config=data/vqa/vqa.yaml model.pretrained=/models/flava-full
    python -m torchflava.classify --checkpoint runs/vqa --images coco --captions data/vqa/test-dev2015_questions.jsonl \
        --text-key question --vqa-submission test-dev2015_results.json

``--images`` holds COCO's ``train2014/``, ``val2014/`` and ``test2015/`` (test-dev's images are test2015's); an
item's image is ``<folder>/COCO_<folder>_<12-digit image id>.jpg`` under it. ``--out`` receives:

* ``train.jsonl``, ``val.jsonl``: one line per question, ``{"image", "text": the question, "answers": {answer:
  score}, "question_id"}`` (:class:`~torchflava.data.finetuning.ImageTextLabels`' format);
* ``answers.json``: the answer vocabulary, a JSON list in class-id order. ``--vocabulary train-top`` (the
  default): the ``--answers`` (3129) answers the training annotators gave most often (each annotator's answer
  counted, as the evaluation matches it), ties in string order. ``butd``: the literature's list (the
  bottom-up-attention code's, :func:`consensus_vocabulary`): each normalised ``multiple_choice_answer`` of at least
  ``--min-answer-count`` (9) training and validation questions, most frequent first, ties in string order;
* ``vqa.yaml``: ``examples/flava/configs/finetuning/vqa.yaml``'s settings with ``data.train``, ``data.val``,
  ``data.image_root`` (absolute paths) and ``data.labels`` (the vocabulary) filled in, each read back as written
  (:func:`yaml_string`: "${x}" too);
* ``<split>_questions.jsonl`` for each ``--test-questions`` file (``test-dev2015``, ``test2015``): ``{"image",
  "question", "question_id"}`` a line, which the classify command answers, writing with ``--vqa-submission`` the
  evaluation server's results file (:func:`submission`).

An answer's score is the official VQA accuracy of predicting it (:func:`vqa_accuracy` among the question's
annotators' answers): answers normalised as the official evaluation compares them (:func:`normalize_answer`), except
where the annotators all gave one answer, which the evaluation compares as written (:func:`matched_answers`);
answers outside the vocabulary stay in the file (the reader drops them). Everything is checked before anything is
written (a bad argument or file: one line naming the argument, exit 2): ``--questions`` and ``--val-questions``
take the annotated splits (``data_subtype`` train2014, val2014), ``--test-questions`` the test ones (test2015,
test-dev2015), as each file's ``data_subtype`` names its split; each file is written atomically, the config last.
No image is read: a missing image file is the training reader's (a counted bad sample); the split's image folder
must exist.
"""

from collections import Counter
from fractions import Fraction
import functools
import json
import os
from pathlib import Path
import re
from typing import Callable, Iterable, Optional, Sequence

from torchflava.utils.checkpoint import atomic_write
from torchflava.utils.cli import command_parser, run_command
from torchflava.utils.config_text import escape_interpolations

# VQA's question files' data_subtype -> the COCO image folder of its images (test-dev is a subset of test2015)
IMAGE_FOLDERS = {"train2014": "train2014", "val2014": "val2014", "test2015": "test2015", "test-dev2015": "test2015"}
ANNOTATED_SUBTYPES = ("train2014", "val2014")  # --questions, --val-questions
TEST_SUBTYPES = ("test2015", "test-dev2015")  # --test-questions: no annotations are published
DEFAULT_ANSWERS = 3129  # the VQA v2 literature's vocabulary size (there: answers seen 9+ times in train+val)
# --vocabulary: the --answers most frequent training answers, or the literature's list (consensus_vocabulary)
VOCABULARIES = ("train-top", "butd")
BUTD_MIN_COUNT = 9  # (the bottom-up-attention code's threshold: 3129 answers on VQA v2's train2014 + val2014)
CONFIG_NAME = "vqa.yaml"
VOCABULARY_NAME = "answers.json"

# The official evaluation's normalisation (vqaEval.py: processPunctuation, processDigitArticle)
_PUNCTUATION = ';/[]"{}()=+\\_->' + "<@`,?!"
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")  # (the official pattern reads so: "5." loses it, "2.5" keeps it)
_NUMBER_WORDS = {  # (the official map takes "none" for 0 too)
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# The official evaluation's contractions as its map acts on lower-case words: each word below written without one
# of its apostrophes gets it back ("dont" -> "don't"; "couldnt've" and "couldn'tve" -> "couldn't've"). The map's
# quirks are kept, for the vocabulary's answers are normalised again by the evaluation server: "lets", "shes", "im",
# "ive" stay (its keys are "let's", "she's", and "Im", "Ive", which no lower-cased word meets), "somebody'd" loses
# its apostrophe; and words that are English without one ("shed", "wed", "ill", "well", "its", "were") it lacks.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've "
    "needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've "
    "somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've "
    "weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've "
    "why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're "
    "you've"
).split()
_CONTRACTIONS = {
    word[:i] + word[i + 1 :]: word for word in _CONTRACTED for i, mark in enumerate(word) if mark == "'"
} | {"somebody'd": "somebodyd"}

# vqa.yaml's settings (examples/flava/configs/finetuning/vqa.yaml; a test checks they agree)
_CONFIG_SETTINGS = """\
optim:
  lr: 1.0e-4
  warmup_steps: 1000
training:
  output_dir: runs/vqa
  max_steps: 20000
  global_batch_size: 64
"""


@functools.lru_cache(maxsize=1024)  # (called for each answer of each question: the same few pairs)
def vqa_accuracy(count: int, total: int = 10) -> float:
    """The VQA accuracy of an answer ``count`` of ``total`` annotators gave: the official metric, min(1, matches / 3)
    averaged over the ``total`` leave-one-annotator-out subsets, (c * min(1, (c - 1) / 3) + (total - c) * min(1,
    c / 3)) / total. Of 10 annotators: 0, 0.3, 0.6, 0.9 and 1 for c = 0, 1, 2, 3 and 4 or more.

    Args:
        count (int): annotators who gave the answer, 0 to ``total``.
        total (int): annotators of the question, at least 1.

    Returns:
        float: the score in [0, 1] (computed exactly, then rounded once to a float).

    Raises:
        ValueError: if ``total`` < 1 or ``count`` is not in [0, total].
    """
    if total < 1 or not 0 <= count <= total:
        raise ValueError(f"expected 0 <= count <= total and total >= 1, got count={count}, total={total}")
    # the c subsets that left out a matching annotator hold c - 1 matches, the others c
    matches_of = [count - 1] * count + [count] * (total - count)
    return float(sum(min(Fraction(1), Fraction(m, 3)) for m in matches_of) / total)


@functools.lru_cache(maxsize=1 << 18)  # (VQA's 4.4 million training answers repeat: each string done once)
def normalize_answer(answer: str) -> str:
    """``answer`` as the official VQA evaluation compares answers (vqaEval.py), rule by rule:

    1. newlines and tabs become spaces, then leading and trailing spaces go;
    2. punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: each mark is removed where it stands next to a
       space somewhere in the answer, or where the answer holds a comma between digits ("1,000" -> "1000"), and
       replaced by a space otherwise ("black-white" -> "black white");
    3. a period is removed unless a digit follows it ("2.5" stays, "yes." -> "yes");
    4. lower case, split on whitespace;
    5. number words zero to ten become digits ("none" too becomes "0", as in the official map);
    6. the articles a, an, the are dropped;
    7. frequent contractions written without their apostrophe get it back ("dont" -> "don't"; :data:`_CONTRACTIONS`);
    8. the words are joined by single spaces.

    Apostrophes, colons, ``%``, ``#``, ``$`` and ``&`` are kept, as the official evaluation keeps them.

    Args:
        answer (str): an annotator's or a model's answer.

    Returns:
        str: the normalised answer (empty where nothing is left, e.g. for "?").
    """
    text = _stripped(answer)
    strip_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        beside_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if beside_space or strip_all else " ")
    out = _PERIOD_NOT_BEFORE_DIGIT.sub("", out)
    words = [_NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def matched_answers(answers: Sequence[str]) -> list[str]:
    """Each annotator's answer as the official evaluation matches a prediction against it: normalised
    (:func:`normalize_answer`) where the annotators disagree, the prediction normalised too; where they all gave one
    answer (newlines and tabs as spaces, surrounding spaces stripped), that answer as written, which the stripped
    prediction must equal: the evaluation keeps such an answer verbatim (text read in the image: "A", "t-shirt").

    Args:
        answers (Sequence[str]): a question's annotators' answers.

    Returns:
        list[str]: one answer per annotator (empty where nothing is left).
    """
    stripped = [_stripped(answer) for answer in answers]
    return stripped if len(set(stripped)) == 1 else [normalize_answer(answer) for answer in answers]


def _stripped(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def answer_scores(answers: Sequence[str], aliases: Optional[dict[str, list[str]]] = None) -> dict[str, float]:
    """Each answer of a question's annotators, as the evaluation matches it (:func:`matched_answers`), with its
    :func:`vqa_accuracy` among them (above 0 only; an empty answer is none), in the order first given: the official
    accuracy of predicting that answer.

    Args:
        answers (Sequence[str]): the annotators' answers (VQA v2: 10).
        aliases (Optional[dict[str, list[str]]]): normalised answer -> the vocabulary's other answers normalised to
            it (kept verbatim from a question its annotators all answered so), given the same score where the
            annotators disagree (the evaluation normalises the prediction: "t-shirt" is then "t shirt").

    Returns:
        dict[str, float]: answer -> score.
    """
    scores = {answer: vqa_accuracy(count, len(answers)) for answer, count in Counter(matched_answers(answers)).items()}
    if aliases and len({_stripped(answer) for answer in answers}) > 1:  # (normalised, as the prediction will be)
        scores.update({alias: score for answer, score in list(scores.items()) for alias in aliases.get(answer, ())})
    return {answer: score for answer, score in scores.items() if answer and score > 0}


def answer_vocabulary(annotations: Iterable[Sequence[str]], size: int) -> list[str]:
    """The ``size`` answers given most often over ``annotations`` (each annotator's answer counted once, as the
    evaluation matches it: :func:`matched_answers`), most frequent first, ties in string order; fewer if there are
    fewer distinct (non-empty) answers.

    Args:
        annotations (Iterable[Sequence[str]]): each question's annotators' answers.
        size (int): how many answers to keep.

    Returns:
        list[str]: the vocabulary in class-id order.
    """
    counts = Counter(answer for answers in annotations for answer in matched_answers(answers))
    counts.pop("", None)
    return sorted(counts, key=lambda answer: (-counts[answer], answer))[:size]


def consensus_vocabulary(consensus: Iterable[tuple[int, str]], min_count: int = BUTD_MIN_COUNT) -> list[str]:
    """The VQA answer vocabulary of the bottom-up-attention code (Anderson et al. 2018, Teney et al. 2018), which
    most VQA fine-tuning uses (LXMERT's, for one): each question's ``multiple_choice_answer`` (the annotators'
    most common answer) normalised (:func:`normalize_answer`, which the unanimous answers get too), kept where at
    least ``min_count`` questions have it. With VQA v2's train2014 and val2014 questions and ``min_count`` 9 the
    literature counts 3129 answers; the empty answer (of "a", "the", "?") is one of them, as in its released lists,
    though no answer is scored as empty (:func:`answer_scores`): a class never a target, as there. Their order (a
    Python 2 dictionary's) cannot be reproduced: here the most frequent come first, ties in string order.

    Args:
        consensus (Iterable[tuple[int, str]]): (question_id, multiple_choice_answer) of each question; a question
            listed twice with one answer counts once.
        min_count (int): the questions an answer must be the multiple_choice_answer of.

    Returns:
        list[str]: the vocabulary in class-id order.
    """
    counts = Counter(answer for _, answer in {(qid, normalize_answer(answer)) for qid, answer in consensus})
    return sorted((answer for answer, count in counts.items() if count >= min_count), key=lambda a: (-counts[a], a))


class _Split:
    """One question file read and checked, with its annotations where it has some: what the converter writes."""

    def __init__(
        self,
        option: str,
        path: str,
        images: Path,
        annotations: Optional[tuple[str, str]] = None,
        *,
        consensus: bool = False,
    ) -> None:
        questions = _json_object(option, path, "questions")
        subtype = questions.get("data_subtype")
        # a split is annotated or a test one by its data_subtype: val2014's questions given as a test split were
        # written questions-only without a word, and a file without one names no image folder to read it from
        subtypes = ANNOTATED_SUBTYPES if annotations is not None else TEST_SUBTYPES
        if subtype not in subtypes:
            kind = "an annotated split's" if annotations is not None else "a test split's"
            got = "no data_subtype" if subtype is None else f"data_subtype {subtype!r:.40}"
            hint = (
                f" ({subtype} is a test split: give it as --test-questions)"
                if subtype in TEST_SUBTYPES
                else f" ({subtype} is annotated: give it as --questions or --val-questions)"
            )
            raise ValueError(
                f"argument {option}: expected {kind} VQA questions file (data_subtype {' / '.join(subtypes)}), "
                f"got {got} in {path}" + (hint if subtype in ANNOTATED_SUBTYPES + TEST_SUBTYPES else "")
            )
        self.subtype, self.folder = subtype, IMAGE_FOLDERS[subtype]
        self.questions = _entries(option, path, questions, "questions", ("image_id", "question_id"))
        for index, entry in enumerate(self.questions):
            if not isinstance(entry.get("question"), str):
                raise ValueError(f"argument {option}: {path} questions[{index}] has no question text (a string)")
        ids = [entry["question_id"] for entry in self.questions]
        if repeated := [qid for qid, count in Counter(ids).items() if count > 1][:3]:
            raise ValueError(f"argument {option}: {path} lists question_id(s) {repeated} more than once")
        if not (images / self.folder).is_dir():
            raise FileNotFoundError(
                f"argument --images: expected COCO's {self.folder}/ folder (the images of {option}'s {subtype}) "
                f"under {str(images)!r}, got none"
            )
        self.consensus: Optional[list[tuple[int, str]]] = None
        self.answers = None if annotations is None else self._answers(*annotations, consensus=consensus)

    def _answers(self, option: str, path: str, *, consensus: bool) -> list[list[str]]:
        """Each question's annotators' answers, in the questions' order; ValueError naming ``option`` where the
        annotations are not VQA's or do not annotate exactly these questions. With ``consensus``, also sets
        :attr:`consensus`: (question_id, multiple_choice_answer) of each annotation, in the file's order."""
        entries = _entries(option, path, _json_object(option, path, "annotations"), "annotations", ("question_id",))
        if consensus:
            for index, entry in enumerate(entries):
                if not isinstance(entry.get("multiple_choice_answer"), str):
                    raise ValueError(
                        f"argument {option}: expected each of {path}'s annotations to hold its multiple_choice_answer "
                        f"(text; read by --vocabulary butd), got {entry!r:.80} at annotations[{index}]"
                    )
            self.consensus = [(entry["question_id"], entry["multiple_choice_answer"]) for entry in entries]
        by_id = {}
        for index, entry in enumerate(entries):
            answers = entry.get("answers")
            if (
                not isinstance(answers, list)
                or not answers
                or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)
            ):
                raise ValueError(
                    f"argument {option}: {path} annotations[{index}] must hold 'answers', a list of "
                    "{'answer': text, ...}"
                )
            by_id[entry["question_id"]] = (entry.get("image_id"), [a["answer"] for a in answers])
        asked = {entry["question_id"]: entry["image_id"] for entry in self.questions}
        unasked, unanswered = sorted(by_id.keys() - asked.keys()), sorted(asked.keys() - by_id.keys())
        if unasked or unanswered or len(by_id) != len(entries):
            got = f"{len(unanswered)} question(s) without annotations (e.g. {unanswered[:3]}), " if unanswered else ""
            got += f"{len(unasked)} annotation(s) of no question (e.g. {unasked[:3]})" if unasked else ""
            raise ValueError(
                f"argument {option}: expected one annotation per question of {self.subtype}'s questions file, got "
                + (got.rstrip(", ") or "question ids annotated more than once")
            )
        if wrong := [qid for qid, (image, _) in by_id.items() if image is not None and image != asked[qid]][:3]:
            raise ValueError(f"argument {option}: question(s) {wrong} annotated for another image than asked about")
        return [by_id[entry["question_id"]][1] for entry in self.questions]

    def image(self, entry: dict) -> str:
        """The path of ``entry``'s image under the image root."""
        return f"{self.folder}/COCO_{self.folder}_{entry['image_id']:012d}.jpg"

    def lines(self, aliases: Optional[dict[str, list[str]]] = None) -> Iterable[str]:
        """The split's jsonl lines: scored questions where annotated (:func:`answer_scores` with ``aliases``), else
        the questions alone."""
        for i, entry in enumerate(self.questions):
            if self.answers is None:
                record = {"image": self.image(entry), "question": entry["question"]}
            else:
                record = {
                    "image": self.image(entry),
                    "text": entry["question"],
                    "answers": answer_scores(self.answers[i], aliases),
                }
            yield json.dumps({**record, "question_id": entry["question_id"]}, ensure_ascii=False) + "\n"


def _json_object(option: str, path: str, key: str) -> dict:
    """The JSON object in ``path`` holding ``key``; FileNotFoundError or ValueError naming ``option`` else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"argument {option}: expected a VQA JSON file, got {path!r} (not a file)")
    try:
        with open(path, encoding="utf-8-sig") as file:
            value = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"argument {option}: expected a VQA JSON file, got {path!r} ({error})") from None
    if not isinstance(value, dict) or key not in value:
        shape = f"keys {sorted(value)[:6]}" if isinstance(value, dict) else f"a JSON {type(value).__name__}"
        raise ValueError(f"argument {option}: expected VQA's JSON object with {key!r}, got {shape} in {path}")
    return value


def _entries(option: str, path: str, document: dict, key: str, ints: tuple[str, ...]) -> list[dict]:
    """``document[key]``: a non-empty list of objects each holding the integer fields ``ints``."""
    entries = document[key]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"argument {option}: expected {path}'s {key!r} to be a non-empty list, got {entries!r:.40}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(
            isinstance(entry.get(name), bool) or not isinstance(entry.get(name), int) for name in ints
        ):
            raise ValueError(
                f"argument {option}: expected each of {path}'s {key} to hold integer {' and '.join(ints)}, "
                f"got {entry!r:.80} at {key}[{index}]"
            )
    return entries


def convert(
    *,
    images: str,
    out: str,
    questions: str,
    annotations: str,
    val_questions: str,
    val_annotations: str,
    test_questions: Sequence[str] = (),
    vocabulary: str = "train-top",
    answers: Optional[int] = None,
    min_answer_count: Optional[int] = None,
    force: bool = False,
) -> dict:
    """Write VQA v2's official files as the fine-tuning recipe's (see the module docstring) into ``out``.

    Args:
        images (str): COCO's image root (holding ``train2014/``, ``val2014/``, ``test2015/`` as needed).
        out (str): the output directory (created; an existing non-empty one only with ``force``).
        questions (str): the training questions (``v2_OpenEnded_mscoco_train2014_questions.json``).
        annotations (str): their annotations (``v2_mscoco_train2014_annotations.json``).
        val_questions (str): the validation questions.
        val_annotations (str): their annotations.
        test_questions (Sequence[str]): unannotated question files (test-dev, test) to write questions-only.
        vocabulary (str): ``train-top``: the ``answers`` answers the training annotators gave most often
            (:func:`answer_vocabulary`); ``butd``: the literature's list, the multiple_choice_answer of at least
            ``min_answer_count`` training and validation questions (:func:`consensus_vocabulary`).
        answers (Optional[int]): the size of the ``train-top`` vocabulary (None: 3129).
        min_answer_count (Optional[int]): the ``butd`` vocabulary's threshold (None: 9).
        force (bool): write into a non-empty ``out`` (its files of the names written are replaced).

    Returns:
        dict: what was written: ``out``, ``config``, ``num_answers``, and each file's number of questions.

    Raises:
        ValueError: for a bad argument or file, naming the argument (before anything is written).
        FileNotFoundError: for a missing file or image folder, naming the argument.
    """
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"argument --vocabulary: expected one of {' / '.join(VOCABULARIES)}, got {vocabulary!r}")
    # each option sets one vocabulary: the other's, given, would be ignored
    if vocabulary == "butd" and answers is not None:
        raise ValueError(
            f"argument --answers: sets the size of --vocabulary train-top, got --answers {answers!r} with butd "
            "(which keeps each answer of at least --min-answer-count questions)"
        )
    if vocabulary == "train-top" and min_answer_count is not None:
        raise ValueError(
            "argument --min-answer-count: sets --vocabulary butd's threshold, got --min-answer-count "
            f"{min_answer_count!r} with train-top (whose size is --answers)"
        )
    answers = DEFAULT_ANSWERS if answers is None else answers
    min_answer_count = BUTD_MIN_COUNT if min_answer_count is None else min_answer_count
    for option, value in (("--answers", answers), ("--min-answer-count", min_answer_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"argument {option}: expected an int >= 1, got {value!r}")
    out_dir, image_root = Path(out).absolute(), Path(images).absolute()
    if not image_root.is_dir():
        raise FileNotFoundError(f"argument --images: expected COCO's image directory, got {images!r} (not a directory)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"argument --out: expected a directory to write into, got {out!r} (a file)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"argument --out: {out!r} is not empty (give --force to write into it, replacing its files)")
    existing = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"argument --out: expected a directory this user may write into, got {out!r} ({existing})")
    butd = vocabulary == "butd"
    train = _Split("--questions", questions, image_root, ("--annotations", annotations), consensus=butd)
    val = _Split("--val-questions", val_questions, image_root, ("--val-annotations", val_annotations), consensus=butd)
    tests = [_Split("--test-questions", path, image_root) for path in test_questions]
    if butd:
        labels = consensus_vocabulary([*train.consensus, *val.consensus], min_answer_count)
        if not labels:
            raise ValueError(
                f"argument --min-answer-count: no answer is the multiple_choice_answer of {min_answer_count} or more "
                f"of the {len(train.questions) + len(val.questions)} training and validation questions"
            )
    else:
        labels = answer_vocabulary(train.answers, answers)
    aliases: dict[str, list[str]] = {}  # (answers kept verbatim score as their normalised form where normalised)
    for answer in labels:
        if normalize_answer(answer) != answer:
            aliases.setdefault(normalize_answer(answer), []).append(answer)
    outputs: dict[str, Callable[[], Iterable[str]]] = {
        VOCABULARY_NAME: lambda: [json.dumps(labels, indent=0, ensure_ascii=False) + "\n"],
        "train.jsonl": functools.partial(train.lines, aliases),
        "val.jsonl": functools.partial(val.lines, aliases),
    }
    for split in tests:
        name = f"{split.subtype}_questions.jsonl"
        if name in outputs:
            raise ValueError(f"argument --test-questions: expected each split once, got {split.subtype} twice")
        outputs[name] = split.lines
    outputs[CONFIG_NAME] = lambda: [
        finetuning_config(out_dir / "train.jsonl", out_dir / "val.jsonl", image_root, labels)
    ]
    read = {Path(path).resolve() for path in (questions, annotations, val_questions, val_annotations, *test_questions)}
    if clash := [name for name in outputs if (out_dir / name).resolve() in read]:
        raise ValueError(f"argument --out: writing {clash[0]} there would replace an input file")
    for name, lines in outputs.items():  # (the config last: where it is, every file it names is whole)
        atomic_write(out_dir / name, functools.partial(_write_lines, lines))
    counts = {"train.jsonl": len(train.questions), "val.jsonl": len(val.questions)}
    counts.update({f"{split.subtype}_questions.jsonl": len(split.questions) for split in tests})
    return {"out": str(out_dir), "config": str(out_dir / CONFIG_NAME), "num_answers": len(labels), **counts}


def _write_lines(lines: Callable[[], Iterable[str]], path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(lines())


def finetuning_config(train: Path, val: Path, image_root: Path, labels: Sequence[str]) -> str:
    """The text of a fine-tuning config (``examples/flava/finetune.py``) of the VQA task: ``vqa.yaml``'s settings
    with the data files, image root and answer vocabulary filled in. Strings are written so that the recipe reads
    them back as they are (:func:`yaml_string`): no answer is read as a number, a boolean, null or an
    interpolation."""
    return (
        "# Fine-tuning FLAVA on VQA v2, written by python -m torchflava.data.vqa:\n"
        "#   python examples/flava/finetune.py config=THIS_FILE model.pretrained=CHECKPOINT\n"
        "model:\n  modality: multimodal\n"
        "data:\n  task: image_text\n"
        f"  train: {yaml_string(str(train))}\n  val: {yaml_string(str(val))}\n  image_root: {yaml_string(str(image_root))}\n"
        "  max_text_length: null\n"
        f"  labels:  # the {len(labels)} answers in class-id order ({VOCABULARY_NAME})\n"
        + "".join(f"    - {yaml_string(label)}\n" for label in labels)
        + _CONFIG_SETTINGS
    )


# what a YAML double-quoted scalar may not hold as it is: the quote and the backslash, and all but printable text
# (tabs, other control characters, the characters YAML reads as line breaks and folds into spaces, the byte-order
# mark; lone surrogates, which no UTF-8 file holds, are left to fail where the file is written)
_YAML_UNSAFE = re.compile(r'["\\]|[^\x20-\x7e\xa0-\ufffd\U00010000-\U0010ffff]|[\u2028\u2029\ufeff]')


def yaml_string(text: str) -> str:
    """``text`` as a YAML scalar that OmegaConf (the recipes' config reader) reads back as ``text``: each ``${``,
    which OmegaConf reads as an interpolation ("${x}": a missing key), escaped (:func:`escape_interpolations`), then
    written as a YAML double-quoted string (so "yes", "null", "1e3" stay text), escaping what YAML would not keep
    (quotes, backslashes, control characters, line breaks).

    Args:
        text (str): any text (that UTF-8 can encode).

    Returns:
        str: the scalar, quotes included.
    """
    return '"' + _YAML_UNSAFE.sub(_yaml_escape, escape_interpolations(text)) + '"'


def _yaml_escape(found: re.Match) -> str:
    code = ord(found.group())
    if found.group() in '"\\':
        return "\\" + found.group()
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def submission_questions(path: str, *, image_key: str = "image", text_key: str = "question") -> list[tuple]:
    """(image, question, question_id) of each non-blank line of a questions jsonl (the converter's
    ``<split>_questions.jsonl``), for :func:`submission`.

    Args:
        path (str): the jsonl file.
        image_key (str): the key of the image path.
        text_key (str): the key of the question.

    Returns:
        list[tuple]: (image, question, question_id) of each line, in order.

    Raises:
        ValueError: if the file is not UTF-8 JSON lines each holding ``image_key``, ``text_key`` and an integer
            ``question_id``, naming the line.
    """
    questions = []
    try:
        with open(path, encoding="utf-8-sig") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise ValueError(f"{path} line {number}: expected a JSON object ({error})") from None
                keys = (image_key, text_key, "question_id")
                if not isinstance(record, dict) or any(key not in record for key in keys):
                    raise ValueError(
                        f"{path} line {number}: expected a JSON object with {list(keys)}, got {line!r:.80}"
                    )
                if type(record["question_id"]) is not int:
                    raise ValueError(f"{path} line {number}: expected an integer question_id, got {line!r:.80}")
                questions.append(tuple(record[key] for key in keys))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return questions


def submission(predictions: Sequence[dict], questions: Sequence[tuple], images: str) -> tuple[list[dict], list[int]]:
    """VQA's results file for the evaluation server, ``[{"question_id": int, "answer": str}]``, of the classify
    command's ``predictions`` (each ``{"image", "text", "top": [[answer, score], ...]}``, the image relative to
    ``images`` or absolute) of the :func:`submission_questions` ``questions``: each question answered by the top
    answer of the prediction of its image and question (one input, one answer: duplicates share it).

    Args:
        predictions (Sequence[dict]): the classify command's predictions.
        questions (Sequence[tuple]): (image, question, question_id) of each question, the image under ``images``.
        images (str): the command's ``--images``.

    Returns:
        tuple[list[dict], list[int]]: the results in the questions' order, and the ids of the questions no
        prediction answers (their images unreadable: skipped by the command).
    """
    root = os.path.abspath(images)
    answers = {
        (os.path.normpath(os.path.join(root, p["image"])), p["text"]): p["top"][0][0] for p in predictions if p["top"]
    }
    results, unanswered = [], []
    for image, question, question_id in questions:
        key = (os.path.normpath(os.path.join(root, str(image))), str(question).strip())
        if key in answers:
            results.append({"question_id": question_id, "answer": answers[key]})
        else:
            unanswered.append(question_id)
    return results, unanswered


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = command_parser("torchflava.data.vqa", __doc__)
    parser.add_argument(
        "--images", required=True, metavar="DIR", help="COCO's image root (train2014/, val2014/, test2015/)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument(
        "--questions",
        required=True,
        metavar="FILE",
        help="training questions: v2_OpenEnded_mscoco_train2014_questions.json",
    )
    parser.add_argument(
        "--annotations",
        required=True,
        metavar="FILE",
        help="training annotations: v2_mscoco_train2014_annotations.json",
    )
    parser.add_argument("--val-questions", required=True, metavar="FILE", help="validation questions (val2014's)")
    parser.add_argument("--val-annotations", required=True, metavar="FILE", help="validation annotations (val2014's)")
    parser.add_argument(
        "--test-questions",
        nargs="+",
        default=[],
        metavar="FILE",
        help="unannotated question files (test-dev2015, test2015)",
    )
    parser.add_argument(
        "--vocabulary",
        choices=VOCABULARIES,
        default="train-top",
        help="train-top: the --answers answers the training annotators gave most often; butd: the literature's "
        "list (bottom-up attention's, LXMERT's), each multiple_choice_answer of at least --min-answer-count "
        "training and validation questions [train-top]",
    )
    parser.add_argument(
        "--answers", type=int, metavar="N", help=f"train-top: the vocabulary's size [{DEFAULT_ANSWERS}]"
    )
    parser.add_argument(
        "--min-answer-count",
        type=int,
        metavar="N",
        help=f"butd: the questions an answer must be the multiple_choice_answer of [{BUTD_MIN_COUNT}]",
    )
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing its files")
    args = parser.parse_args(argv)
    result = convert(**{name: value for name, value in vars(args).items()})
    print(
        f"{result['num_answers']} answers; {result['train.jsonl']} training and {result['val.jsonl']} validation "
        f"questions; config {result['config']}"
    )
    return result


if __name__ == "__main__":
    run_command(main)
