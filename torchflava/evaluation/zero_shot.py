"""Zero-shot classification and retrieval from L2-normalised image and text features.

The functions work on features (any model that gives ``(N, D)`` normalised embeddings), plus
:func:`zero_shot_classifier`, which turns class names and prompt templates into class embeddings
with a text encoder and a tokenizer passed in as callables.
"""

from collections import abc
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor
import torch.nn.functional as F

from torchflava.utils.checks import check_int, fill_template, is_integer_tensor, is_prompt_template

NORM_TOLERANCE = 1e-2  # relative: bf16 features normalised in bf16 have norms within ~4e-3 of 1
# most retrieval similarities computed at once: COCO 5k's whole (5,000, 25,000) fp32 matrix is 500 MB,
# and its masked copy and comparisons as much again; a block of 1M scores peaks at ~65 MB (fp64 sums,
# the fp32 scores, a masked copy, boolean masks: measured on 2,000 x 10,000)
RETRIEVAL_BLOCK_SIZE = 1 << 20


def check_finite(**tensors: Tensor) -> None:
    """ValueError naming the first of ``tensors`` (by keyword) that holds NaN or infinite values."""
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} holds NaN or infinite values (a diverged model?)")


def check_normalised(**tensors: Tensor) -> None:
    """ValueError naming the first of ``tensors`` (by keyword, each (N, D) and finite) whose rows are not
    L2-normalised, within a relative :data:`NORM_TOLERANCE` (the rankings compare dot products: a
    longer row would rank first whatever its direction)."""
    for name, tensor in tensors.items():
        norms = tensor.float().norm(dim=-1)
        if bool(((norms - 1).abs() > NORM_TOLERANCE).any()):
            raise ValueError(
                f"{name} must hold L2-normalised rows (norm 1 within a relative {NORM_TOLERANCE:g}), got norms in "
                f"[{float(norms.min()):.4g}, {float(norms.max()):.4g}] (torch.nn.functional.normalize(x, dim=-1))"
            )


def check_class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> None:
    """The checks of :func:`zero_shot_classifier`'s ``class_names`` and ``templates``, for callers that
    want them before any other work (see there for the errors)."""
    for name, names in (("class_names", class_names), ("templates", templates)):
        # a str is not split into letters; a set's (or a dict's) order follows the hash seed, not the caller
        if isinstance(names, str) or not isinstance(names, abc.Sequence) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"{name} must be a sequence of str (a list or tuple, in order), got {type(names).__name__}")
    if len(class_names) == 0 or len(templates) == 0:
        raise ValueError("class_names and templates must not be empty")
    if not all(n.strip() for n in class_names) or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be distinct non-empty names, got {list(class_names)}")
    bad = [t for t in templates if not is_prompt_template(t)]
    if bad:
        raise ValueError(
            f"templates must contain one '{{}}' (or '{{c}}') for the class name and no other braces, got {bad}"
        )


def check_distinct_tokens(class_names: Sequence[str], num_templates: int, ids: object, mask: object) -> None:
    """ValueError naming the first two of ``class_names`` whose prompts (``num_templates`` each, class
    after class) the tokenizer turned into the same ids and attention mask: the model sees one name
    twice (an uncased tokenizer reads ``Cat`` as ``cat``, a BERT one ``red  circle`` as ``red circle``;
    two names of characters outside the vocabulary are both unknown tokens), so the two classes got
    one embedding, every image of either was given the first, and the accuracy counted each as a tie.
    Nothing is checked unless ``ids`` and ``mask`` are tensors of one row per prompt (a tokenizer of
    another kind is left to ``encode_text``)."""
    prompts = len(class_names) * num_templates
    if not all(isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == prompts for t in (ids, mask)):
        return
    rows = torch.cat([ids.reshape(prompts, -1).long(), mask.reshape(prompts, -1).long()], dim=1)
    rows = rows.reshape(len(class_names), -1)  # (C, the ids and masks of the class's prompts)
    _, first = torch.unique(rows, dim=0, return_inverse=True)
    seen: dict[int, int] = {}
    for index, group in enumerate(first.tolist()):
        if group in seen:
            a, b = class_names[seen[group]], class_names[index]
            raise ValueError(
                f"class_names must differ in what the tokenizer keeps, got {a!r} and {b!r}: their prompts are "
                "the same tokens (the tokenizer's case, spacing, unknown characters or truncation), so no image could "
                "be told apart between them"
            )
        seen[group] = index


def zero_shot_classifier(
    encode_text: Callable[[Tensor, Tensor], Tensor],
    tokenize: Callable[[Sequence[str]], tuple[Tensor, Tensor]],
    class_names: Sequence[str],
    templates: Sequence[str] = ("a {}",),
    *,
    batch_size: Optional[int] = None,
) -> Tensor:
    """One embedding per class: the normalised mean of its prompts' normalised text features.

    Args:
        encode_text (Callable[[Tensor, Tensor], Tensor]): (ids, attention mask) -> (P, D) features.
        tokenize (Callable[[Sequence[str]], tuple[Tensor, Tensor]]): texts -> (ids, attention mask).
        class_names (Sequence[str]): the C class names.
        templates (Sequence[str]): prompt templates with one ``{}`` for the class name.
        batch_size (Optional[int]): most prompts per ``encode_text`` call (the rows of the ids and mask
            ``tokenize`` gave, cut in order); None: all C x T prompts in one call (ImageNet's 1000 classes
            with CLIP's 80 templates are 80,000 prompts: give one).

    Returns:
        Tensor: (C, D) class embeddings.

    Raises:
        TypeError: if ``class_names`` or ``templates`` is not an ordered sequence of str (a str itself
            or a set included), ``batch_size`` not an int or None, ``tokenize`` does not return a pair
            (of tensors, with ``batch_size``) or ``encode_text`` not a tensor.
        ValueError: if there are no classes or templates, ``batch_size`` is below 1, a class name is
            empty or repeated, a template lacks ``{}``, two class names give the same prompt tokens (see
            :func:`check_distinct_tokens`; before any text is encoded), or ``encode_text`` does not
            return (P, D) finite floating-point features for the P prompts, none of them all zero.
    """
    check_class_prompts(class_names, templates)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    prompts = [fill_template(template, name) for name in class_names for template in templates]
    tokens = tokenize(prompts)
    if not isinstance(tokens, (tuple, list)) or len(tokens) != 2:  # a (2, L) tensor would unpack into two rows
        got = (
            f"{type(tokens).__name__} of {len(tokens)}" if isinstance(tokens, (tuple, list)) else type(tokens).__name__
        )
        raise TypeError(f"tokenize must return a pair (ids, attention mask), got {got}")
    if batch_size is not None and not all(isinstance(t, Tensor) for t in tokens):  # (cut by rows below)
        raise TypeError(
            f"tokenize must return a pair of tensors to be cut into batches, got {', '.join(type(t).__name__ for t in tokens)}"
        )
    check_distinct_tokens(class_names, len(templates), *tokens)
    with torch.no_grad():
        features = _encoded(encode_text, tokens, batch_size)
    if not isinstance(features, Tensor):
        raise TypeError(f"encode_text must return a tensor, got {type(features).__name__}")
    if features.dim() != 2 or features.shape[0] != len(prompts) or features.shape[1] == 0:
        raise ValueError(
            f"encode_text must return ({len(prompts)}, D) features, one row per prompt, got shape {tuple(features.shape)}"
        )
    if not features.is_floating_point():
        raise ValueError(f"encode_text must return floating-point features, got {features.dtype}")
    check_finite(**{"encode_text's output": features})
    zero = (features.detach().double().norm(dim=-1) == 0).nonzero().flatten().tolist()
    if zero:  # (F.normalize leaves a zero row zero: its class's mean was then of the other prompts, silently)
        raise ValueError(
            f"encode_text returned a zero feature (no direction to normalise) for the prompt {prompts[zero[0]]!r}"
        )
    features = F.normalize(features.detach().float(), dim=-1)
    per_class = features.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def _encoded(
    encode_text: Callable[[Tensor, Tensor], Tensor], tokens: Sequence[Tensor], batch_size: Optional[int]
) -> object:
    """``encode_text``'s features of the tokenised prompts, ``batch_size`` rows a call (all at once for
    None: the whole prompt set's activations held at once ran a 1000-class prompt ensemble out of
    memory), the chunks' features joined in order; what a call returns that is not a tensor is
    returned as it is, for the caller to refuse."""
    if batch_size is None or tokens[0].shape[0] <= batch_size:
        return encode_text(*tokens)
    chunks = []
    for start in range(0, tokens[0].shape[0], batch_size):
        chunk = encode_text(*(t[start : start + batch_size] for t in tokens))
        if not isinstance(chunk, Tensor) or chunk.dim() != 2:
            return chunk  # (refused by the caller, which names what it got)
        chunks.append(chunk)
    return torch.cat(chunks)


def classification_accuracy(image_features: Tensor, class_embeddings: Tensor, labels: Tensor, *, k: int = 1) -> float:
    """Top-``k`` accuracy of nearest-class-embedding classification. An image counts 1 when its class is
    among the ``k`` best, 0 when ``k`` classes score strictly higher, and, where its class is tied with
    others at the cut-off, the share of them that fits in the places left ((k - classes strictly higher)
    / classes tied, its own included): a random tie-break's expectation, so that collapsed features
    score 1/C at top-1 whatever the labels (argmax took the lowest index: 1.0 or 0.0).

    Args:
        image_features (Tensor): (N, D) normalised image features.
        class_embeddings (Tensor): (C, D) normalised class embeddings.
        labels (Tensor): (N,) class indices in [0, C).
        k (int): how many of the best classes may hold the right one, in [1, C - 1] (1: top-1).

    Returns:
        float: accuracy in [0, 1].

    Raises:
        TypeError: if an argument is not a tensor, or ``k`` not an int.
        ValueError: if the shapes disagree, there are no images or fewer than 2 classes, ``k`` is not
            below the number of classes (top-5 of 5 classes or fewer is right whatever the model),
            ``labels`` are not integers in range, the features are not floating-point or not on one
            device, or a feature is NaN, infinite or not normalised (norm 1 within a relative
            :data:`NORM_TOLERANCE`).
    """
    credit = class_credit(image_features, class_embeddings, labels, k=k)
    # averaged in float64 (on the CPU: MPS has none): a float32 mean gave 81 right of 100 as 0.8100000023841858
    return credit.cpu().double().mean().item()


def mean_per_class_accuracy(image_features: Tensor, class_embeddings: Tensor, labels: Tensor, *, k: int = 1) -> float:
    """Top-``k`` accuracy of each class over its own images, averaged over the classes that have images
    (the CLIP paper's metric for its unbalanced sets: Pets, Caltech-101, Flowers, Aircraft). A class with
    no image in ``labels`` has no accuracy and is left out of the mean (not counted as 0 or 1), though it
    still competes as a prediction; ties as :func:`classification_accuracy`.

    Args:
        image_features (Tensor): (N, D) normalised image features.
        class_embeddings (Tensor): (C, D) normalised class embeddings.
        labels (Tensor): (N,) class indices in [0, C).
        k (int): how many of the best classes may hold the right one, in [1, C - 1].

    Returns:
        float: the mean over the classes present in ``labels``, in [0, 1].

    Raises:
        TypeError: if an argument is not a tensor, or ``k`` not an int.
        ValueError: as :func:`classification_accuracy`.
    """
    credit = class_credit(image_features, class_embeddings, labels, k=k)
    return per_class_mean(credit, labels, class_embeddings.shape[0])


def per_class_mean(credit: Tensor, labels: Tensor, num_classes: int) -> float:
    """The mean over the classes present in ``labels`` of each class's mean ``credit`` (in float64), as
    :func:`mean_per_class_accuracy` takes it; ``credit`` (N,) from :func:`class_credit`, ``labels`` (N,)
    checked class indices in [0, ``num_classes``) (a caller that scores images a chunk at a time joins
    the chunks' credits and labels first)."""
    credit = credit.detach().cpu().double()  # (N values; MPS has no float64)
    labels = labels.long().cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=credit.device).index_add_(0, labels, credit)
    present = counts > 0  # (a class without images would divide 0 by 0)
    return (sums[present] / counts[present]).mean().item()


def class_credit(
    image_features: Tensor,
    class_embeddings: Tensor,
    labels: Tensor,
    *,
    k: int = 1,
    distinct: Optional[tuple[Optional[Tensor], Optional[Tensor]]] = None,
) -> Tensor:
    """(N,) float32 credit of each image under top-``k`` classification, on the features' device: the
    rule and the errors of :func:`classification_accuracy`, whose value is its mean. Each image's credit
    depends on its own row alone, so a folder scored a chunk of images at a time (and the chunks'
    credits joined) gives the accuracy of all of them at once, never holding the (N, C) similarities;
    ``distinct``: :func:`distinct_rows` of ``class_embeddings``, worked out once for such chunks (None: here)."""
    _check_tensors(image_features=image_features, class_embeddings=class_embeddings, labels=labels)
    _check_features(image_features=image_features, class_embeddings=class_embeddings)
    if image_features.dim() != 2 or class_embeddings.dim() != 2 or image_features.shape[1] != class_embeddings.shape[1]:
        raise ValueError(
            f"image_features (N, D) and class_embeddings (C, D) must share D, got {tuple(image_features.shape)} "
            f"and {tuple(class_embeddings.shape)}"
        )
    if image_features.shape[0] == 0:
        raise ValueError("image_features must hold at least one row (the accuracy of none is undefined)")
    if class_embeddings.shape[0] < 2:  # (one class: every image is right, whatever the model)
        raise ValueError(
            "class_embeddings must hold at least 2 classes (with one every image is right), got "
            f"{class_embeddings.shape[0]}"
        )
    if check_int("k", k, 1) >= class_embeddings.shape[0]:  # (the right class is always among the best k)
        raise ValueError(
            f"k must be below the number of classes, {class_embeddings.shape[0]} (top-{k} of them is right "
            f"whatever the model), got {k}"
        )
    if labels.shape != (image_features.shape[0],) or not is_integer_tensor(labels):
        raise ValueError(
            f"labels must be ({image_features.shape[0]},) integer class indices, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    if bool(((labels < 0) | (labels >= class_embeddings.shape[0])).any()):
        raise ValueError(f"labels must be in [0, {class_embeddings.shape[0]})")
    check_finite(image_features=image_features, class_embeddings=class_embeddings)
    check_normalised(image_features=image_features, class_embeddings=class_embeddings)
    classes = class_embeddings.detach().float()
    first, column = distinct_rows(class_embeddings) if distinct is None else distinct
    if column is None:  # (every class its own row)
        similarity = image_features.float() @ classes.T  # (N, C)
    else:  # equal class rows scored through one column: an fp32 matmul gives two equal columns values a bit apart
        # where they sit in different places of its tiles (3 images, 30 classes of 20 dims: most draws), which
        # broke the tie
        similarity = (image_features.float() @ classes[first].T)[:, column]  # (N, C)
    labels = labels.long().to(similarity.device)  # (gather takes long indices)
    own = similarity.gather(1, labels[:, None])  # (N, 1) each image's score with its class
    above = (similarity > own).sum(dim=1)  # classes that certainly rank first
    tied = (similarity == own).sum(dim=1)  # its own class and those level with it (>= 1)
    return ((k - above).clamp_min(0).float() / tied).clamp_max(1.0)


def distinct_rows(rows: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``(first, column)`` of the (C, D) class embeddings ``rows``, for :func:`class_credit`: ``rows[first]`` their
    distinct rows (each one's first place) and ``column`` (C,) each row's index among them; ``(None, None)`` where
    all are distinct. A sort of the rows (``torch.unique``: ~0.3-0.5 s at 21843 x 768): a caller that scores a
    folder a chunk at a time against one tensor works it out once and passes it on."""
    distinct, column = torch.unique(rows.detach().float(), dim=0, return_inverse=True)
    if distinct.shape[0] == rows.shape[0]:
        return None, None
    places = torch.arange(rows.shape[0], device=rows.device)
    first = torch.full((distinct.shape[0],), rows.shape[0], device=rows.device).scatter_reduce(
        0, column, places, "amin"
    )
    return first, column


def _check_tensors(**tensors: object) -> None:
    """TypeError naming the first argument that is not a tensor."""
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")


def _check_features(**features: Tensor) -> None:
    """ValueError naming the first of two feature tensors that is not floating-point (a complex one lost
    its imaginary part in the cast to float, silently), or both where they are on different devices
    (the similarity's matmul failed inside torch)."""
    for name, tensor in features.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be floating-point features, got {tensor.dtype}")
    (a, x), (b, y) = features.items()
    if x.device != y.device:
        raise ValueError(f"{a} and {b} must be on one device, got {x.device} and {y.device}")


def retrieval_recall(
    image_features: Tensor,
    text_features: Tensor,
    ks: Iterable[int] = (1, 5, 10),
    *,
    image_of_text: Optional[Tensor] = None,
    block_size: int = RETRIEVAL_BLOCK_SIZE,
) -> dict[str, float]:
    """Recall@K of image->text and text->image retrieval.

    By default row i of each matches row i of the other. With ``image_of_text`` an image may have
    several captions (COCO's five): text->image is right when the text's image ranks within K, and
    image->text when one of the image's captions does. Ties count against the right answer (a right
    candidate ranks after every wrong one level with it), so collapsed, identical features score no
    better than last, not perfect, recall. So do exact duplicates: one picture under two rows (two ids
    of one file) ties with itself, and a caption listed under two images (two rows of one text) with
    itself, each costing the other its R@1; give a file one row, and its captions one ``image_of_text``.

    Args:
        image_features (Tensor): (M, D) normalised, one row per distinct image.
        text_features (Tensor): (T, D) normalised.
        ks (Iterable[int]): the cut-offs, each in [1, T] (read once: a generator works). Each direction is
            scored up to the size of what it ranks: image->text for every K (T texts), text->image for
            K <= M (M images): 3 images with 15 captions give image->text R@5 but no text->image R@5.
        image_of_text (Optional[Tensor]): (T,) integer rows of each text's image; None: the identity (M = T).
        block_size (int): most of the (M, T) similarities computed at once (rows of images against
            every text, then every image against columns of texts; at least one row or column), rather
            than the whole matrix: COCO 5k's is 500 MB. The recalls are those of the whole matrix,
            ties included (tested).

    Returns:
        dict[str, float]: ``image_to_text_R@K`` for each K, ``text_to_image_R@K`` for each K <= M.

    Raises:
        TypeError: if a feature or ``image_of_text`` is not a tensor, or ``block_size`` not an int.
        ValueError: if ``block_size`` is below 1, the shapes disagree, there are no images or no
            texts, an image has no text, ``image_of_text`` is not integer, ``ks`` is not a non-empty sequence of ints in range, the
            features are not floating-point or not on one device, or a feature is NaN, infinite or not
            normalised (norm 1 within a relative :data:`NORM_TOLERANCE`).
    """
    _check_tensors(image_features=image_features, text_features=text_features)
    _check_features(image_features=image_features, text_features=text_features)
    check_int("block_size", block_size, 1)
    if image_of_text is not None:
        _check_tensors(image_of_text=image_of_text)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, abc.Iterable):
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    ks = list(ks)  # once: a generator would be empty by the time the results are made
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    if image_features.dim() != 2 or text_features.dim() != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image_features and text_features must be (M, D) and (T, D), got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    m, t = image_features.shape[0], text_features.shape[0]
    if m == 0 or t == 0:  # (ks' error, "in [1, 0]", named the wrong argument)
        raise ValueError(f"image_features and text_features must hold at least one row each, got {m} and {t}")
    if image_of_text is None:
        if m != t:
            raise ValueError(
                f"image_features and text_features must have as many rows without image_of_text, got {m} and {t}"
            )
        image_of_text = torch.arange(t)
    if image_of_text.shape != (t,) or not is_integer_tensor(image_of_text):
        raise ValueError(
            f"image_of_text must be ({t},) integer rows of image_features, got {image_of_text.dtype} of shape "
            f"{tuple(image_of_text.shape)}"
        )
    image_of_text = image_of_text.long().to(image_features.device)  # a uint8 index would be read as a mask
    if t and (int(image_of_text.min()) < 0 or int(image_of_text.max()) >= m or image_of_text.unique().numel() != m):
        raise ValueError(f"image_of_text must give every one of the {m} images at least one text, in [0, {m})")
    if any(not 1 <= k <= t for k in ks):  # (t >= m: every image has a text)
        raise ValueError(f"ks must lie in [1, {t}] (the texts image->text ranks), got {ks}")
    check_finite(image_features=image_features, text_features=text_features)
    check_normalised(image_features=image_features, text_features=text_features)
    return _blockwise_recalls(image_features, text_features, image_of_text, ks, block_size)


def _blockwise_recalls(
    image_features: Tensor, text_features: Tensor, image_of_text: Tensor, ks: list[int], block_size: int
) -> dict[str, float]:
    """:func:`retrieval_recall`'s recalls of checked features (fp64), about ``block_size`` of the (M, T)
    similarities at a time: rows of images against every text (image->text ranks each row), then every
    image against columns of texts (text->image ranks each column).

    The scores are summed in fp64 and rounded to fp32 (:func:`_scores`): an fp32 matmul's last bit
    depends on the shapes it is given and on a row's place in them (two identical images, in two
    blocks or in one (M, 1) block, scored a text one bit apart), which broke the exact ties that the
    rule counts against the query; fp64 sums of the same products differ far below fp32's rounding."""
    if image_features.device.type == "mps":  # (no fp64 there: the recalls are counted on the CPU)
        image_features, text_features, image_of_text = image_features.cpu(), text_features.cpu(), image_of_text.cpu()
    image_features, text_features = image_features.double(), text_features.double()
    m, t = image_features.shape[0], text_features.shape[0]
    device = image_features.device
    i2t_rank = torch.empty(m, dtype=torch.long, device=device)
    rows = max(1, block_size // t)
    for start in range(0, m, rows):
        block = _scores(image_features[start : start + rows], text_features)  # (rows, T)
        images = torch.arange(start, start + block.shape[0], device=device)
        right = image_of_text[None, :] == images[:, None]
        best = block.masked_fill(~right, float("-inf")).amax(dim=1)  # each image's best caption
        # wrong texts scoring at least as high
        i2t_rank[start : start + block.shape[0]] = ((block >= best[:, None]) & ~right).sum(dim=1)
    t2i_rank = torch.empty(t, dtype=torch.long, device=device)
    columns = max(1, block_size // m)
    for start in range(0, t, columns):
        block = _scores(image_features, text_features[start : start + columns])  # (M, columns)
        texts = torch.arange(start, start + block.shape[1], device=device)
        mine = image_of_text[texts]
        right = mine[None, :] == torch.arange(m, device=device)[:, None]
        own = block[mine, texts - start]  # each text's score with its image
        # wrong images scoring at least as high
        t2i_rank[start : start + block.shape[1]] = ((block >= own[None, :]) & ~right).sum(dim=0)
    out = {}
    for k in ks:  # (as a share of the images, of the texts; each direction up to the size of what it ranks)
        out[f"image_to_text_R@{k}"] = (i2t_rank < k).double().mean().item()
        if k <= m:
            out[f"text_to_image_R@{k}"] = (t2i_rank < k).double().mean().item()
    return out


def _scores(images: Tensor, texts: Tensor) -> Tensor:
    """(rows, columns) fp32 similarities of fp64 ``images`` (rows, D) and ``texts`` (columns, D): the fp32
    features' products are exact in fp64 and their sums, whatever the order a matmul of that shape
    takes, round to the same fp32 value but where one lies within ~D fp64 ulps of a rounding boundary."""
    return (images @ texts.T).float()
