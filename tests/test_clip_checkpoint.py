"""read_clip_checkpoint on the CLIP checkpoints a fine-tuning run starts from: a Hugging Face CLIPModel
directory saved by transformers, open_clip's Hub directory and bare weights files (open_clip's, OpenAI's),
a torchflava run and its export: the clip_model arguments each states, its vocabulary size and end token,
its tokenizer directory, and which tokenizers fit it."""

import copy
import json
import shutil

import open_clip
import pytest
from safetensors.torch import save_file
import torch
from torch.testing import assert_close

from tests.models.clip.test_convert_weights import (
    OPEN_CLIP_CFG,
    OPENAI_ENTRIES,
    OPENAI_SMALL,
    _open_clip_hub_directory,
    _perturb,
    captions,
)
from tests.test_zero_shot_command import write_hf_clip
from torchflava.data.clip_tokenizer import CLIPTokenizer, read_tokenizer
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.models.clip import clip_model, clip_model_arguments
from torchflava.pretrained import CLIPCheckpoint, SizeMisfit, TokenizerMisfit, read_clip_checkpoint, told_sizes
from torchflava.utils.checkpoint import check_url, is_remote

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# What write_hf_clip's CLIPConfig states, as clip_model's arguments.
HF_STATED = dict(
    vision_width=32,
    vision_layers=2,
    vision_heads=4,
    vision_mlp_dim=64,
    text_width=32,
    text_layers=2,
    text_heads=4,
    text_mlp_dim=64,
    embed_dim=16,
    image_size=32,
    patch_size=8,
    context_length=77,
    vocab_size=49408,
    eos_token_id=49407,
    activation="quick_gelu",
    norm_eps=1e-5,
    attention_dropout=0.0,
)


def _vocab(path, size: int) -> WordPieceTokenizer:
    """A BERT vocab.txt of ``size`` tokens ([SEP] is 3)."""
    path.write_text("".join(f"{w}\n" for w in [*SPECIAL, *(f"w{i}" for i in range(size - len(SPECIAL)))]))
    return read_tokenizer(str(path))


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_clip")
    write_hf_clip(directory)
    return directory


def test_a_hugging_face_clip_directory_states_its_architecture_vocabulary_and_end_token(hf_clip, tmp_path):
    checkpoint = read_clip_checkpoint(hf_clip)
    assert isinstance(checkpoint, CLIPCheckpoint)
    assert checkpoint.weights == hf_clip and checkpoint.directory == hf_clip and checkpoint.holds_tokenizer
    assert {k: checkpoint.stated[k] for k in HF_STATED} == HF_STATED
    assert checkpoint.vocab_size == 49408 and checkpoint.end_token(49408) == 49407 == checkpoint.end_token(100)
    tokenizer = CLIPTokenizer.from_directory(hf_clip)
    assert checkpoint.tokenizer_misfits(tokenizer) == []  # its own tokenizer fits
    # every argument stated: what clip_model builds from the directory, with its own vocabulary
    kwargs = checkpoint.model_arguments(tokenizer, text_layers=None, init_std=0.01)  # (None: not given)
    assert kwargs == clip_model_arguments(hf_clip, init_std=0.01) and kwargs["init_std"] == 0.01
    assert {k: kwargs[k] for k in HF_STATED} == HF_STATED
    with pytest.raises(ValueError, match="text_layers"):  # a given value its config states otherwise
        checkpoint.model_arguments(tokenizer, text_layers=3)

    bare = tmp_path / "bare"  # its config and weights without the tokenizer files
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf_clip / name, bare / name)
    checkpoint = read_clip_checkpoint(f"file://{bare}")
    assert checkpoint.directory == bare and not checkpoint.holds_tokenizer and checkpoint.vocab_size == 49408


def test_a_tokenizer_with_more_tokens_or_another_end_token_does_not_fit(hf_clip, tmp_path):
    checkpoint = read_clip_checkpoint(hf_clip)
    assert checkpoint.tokenizer_misfits(_vocab(tmp_path / "small.txt", 6)) == [
        TokenizerMisfit("eos_token_id", 49407, 3)  # BERT's [SEP], not CLIP's end token
    ]
    assert checkpoint.tokenizer_misfits(_vocab(tmp_path / "large.txt", 49410)) == [
        TokenizerMisfit("vocab_size", 49408, 49410),  # its last 2 ids would have no embedding
        TokenizerMisfit("eos_token_id", 49407, 3),
    ]
    # a config stating eos_token_id None (OpenAI's pooling at each row's highest id): the tokenizer's last id
    legacy = CLIPCheckpoint(checkpoint.weights, {**checkpoint.stated, "eos_token_id": None}, checkpoint.directory)
    assert legacy.end_token(49408) == 49407 and legacy.end_token(6) == 5
    assert legacy.tokenizer_misfits(CLIPTokenizer.from_directory(hf_clip)) == []
    assert legacy.tokenizer_misfits(_vocab(tmp_path / "small.txt", 6)) == [TokenizerMisfit("eos_token_id", 5, 3)]


def test_model_arguments_read_neither_the_config_nor_the_weights_again(hf_clip, tmp_path, monkeypatch):
    """model_arguments read the config.json (or a lone file's header) read_clip_checkpoint had read a second time."""
    import torchflava.models.clip.builders as builders
    import torchflava.models.clip.convert_weights as convert_weights

    reads = []
    read_json, peek = convert_weights.read_json_object, builders.peek_state_dict
    monkeypatch.setattr(convert_weights, "read_json_object", lambda path: reads.append(path) or read_json(path))
    monkeypatch.setattr(builders, "peek_state_dict", lambda path, **kw: reads.append(path) or peek(path, **kw))
    tokenizer = CLIPTokenizer.from_directory(hf_clip)
    checkpoint = read_clip_checkpoint(hf_clip)
    assert reads == [hf_clip / "config.json"]
    kwargs = checkpoint.model_arguments(tokenizer, init_std=0.01)
    assert reads == [hf_clip / "config.json"] and kwargs == dict(clip_model_arguments(hf_clip), init_std=0.01)
    lone = tmp_path / "lone"  # a weights file alone: its shapes, read from its header once
    lone.mkdir()
    shutil.copy(hf_clip / "model.safetensors", lone / "weights.safetensors")
    checkpoint = read_clip_checkpoint(
        lone / "weights.safetensors", given=dict(activation="gelu", vision_heads=4, text_heads=4)
    )
    reads.clear()
    kwargs = checkpoint.model_arguments(tokenizer, activation="gelu", vision_heads=4, text_heads=4)
    assert reads == [] and {k: kwargs[k] for k in ("vision_width", "text_layers", "context_length")} == dict(
        vision_width=32, text_layers=2, context_length=77
    )
    assert kwargs == clip_model_arguments(lone / "weights.safetensors", activation="gelu", vision_heads=4, text_heads=4)


@pytest.mark.parametrize("safe", [True, False])
def test_one_shard_of_a_sharded_hugging_face_checkpoint_is_refused_naming_its_index(hf_clip, tmp_path, safe):
    """A shard given alone (save_pretrained's max_shard_size) was read as the whole checkpoint: its few tensors
    were refused as 'expected CLIP keys', or as dozens of missing keys with sizes blamed on the config."""
    from transformers import CLIPModel as HFCLIPModel

    sharded = tmp_path / "sharded"
    HFCLIPModel.from_pretrained(hf_clip).save_pretrained(sharded, max_shard_size="100KB", safe_serialization=safe)
    index = sharded / ("model.safetensors.index.json" if safe else "pytorch_model.bin.index.json")
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    assert len(shards) > 2
    for shard in (shards[0], shards[-1]):
        expected = (
            f"{sharded / shard} is one of the {len(shards)} shards of the checkpoint indexed by {index}: expected "
            f"the whole checkpoint, its directory {sharded} or that index, got one shard"
        )
        for read in (clip_model, read_clip_checkpoint):
            with pytest.raises(ValueError) as caught:
                read(pretrained=sharded / shard) if read is clip_model else read(sharded / shard)
            assert str(caught.value) == expected
    images = torch.randn(2, 3, 32, 32)
    reference = clip_model(pretrained=hf_clip).eval().encode_image(images)
    for whole in (sharded, index):  # the directory and its index read whole, as before
        assert_close(clip_model(pretrained=whole).eval().encode_image(images), reference, rtol=0, atol=1e-6)


def test_open_clip_weights_state_their_sizes_and_no_end_token(tmp_path):
    hub = tmp_path / "hub"
    reference = _open_clip_hub_directory(hub)
    checkpoint = read_clip_checkpoint(hub)  # its open_clip_config.json
    assert checkpoint.weights == hub and checkpoint.directory == hub and not checkpoint.holds_tokenizer
    expected = dict(vision_width=32, vision_layers=2, vision_heads=4, vision_mlp_dim=48, text_width=24)
    expected.update(text_layers=2, text_heads=3, text_mlp_dim=48, embed_dim=20, image_size=32, patch_size=8)
    expected.update(context_length=16, vocab_size=99, activation="quick_gelu")
    assert checkpoint.stated == expected
    assert checkpoint.vocab_size == 99 and checkpoint.end_token(99) is None  # open_clip's config states none
    assert checkpoint.tokenizer_misfits(_vocab(tmp_path / "v99.txt", 99)) == []  # any end token
    assert checkpoint.tokenizer_misfits(_vocab(tmp_path / "v100.txt", 100)) == [TokenizerMisfit("vocab_size", 99, 100)]

    lone = tmp_path / "lone"  # the weights file alone: its tensors tell the sizes (the activation: not; the heads:
    lone.mkdir()  # only 64 wide, so these widths' are given)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, lone / "weights.safetensors")
    heads = dict(vision_heads=4, text_heads=3)
    checkpoint = read_clip_checkpoint(
        lone / "weights.safetensors", given=dict(heads, activation="quick_gelu")
    )  # (nor it)
    assert checkpoint.weights == lone / "weights.safetensors" and checkpoint.directory == lone
    sizes = {k: v for k, v in expected.items() if k not in ("vision_heads", "text_heads", "activation")}
    assert checkpoint.stated == sizes
    assert not checkpoint.holds_tokenizer and checkpoint.end_token(99) is None

    # OpenAI's state dict: its metadata entries beside the weights, which were trained with QuickGELU
    openai = {
        **reference.state_dict(),
        **{k: torch.tensor(v) for k, v in (("input_resolution", 32), ("vocab_size", 99))},
    }
    torch.save({**openai, "context_length": torch.tensor(16)}, lone / "openai.pt")
    assert read_clip_checkpoint(lone / "openai.pt", given=heads).stated == dict(sizes, activation="quick_gelu")
    given = {"activation": "gelu", "text_layers": None, **heads}  # a given activation is the caller's
    assert "activation" not in read_clip_checkpoint(lone / "openai.pt", given=given).stated


def test_openai_torchscript_archive_loads_as_open_clip_computes_with_its_fp16_weights(tmp_path):
    """OpenAI's released .pt files are TorchScript archives of an fp16 model with its three entries as buffers
    (they were refused, naming torch.jit.load): their weights are read without running their code, and the
    fp32 model's features are open_clip's on the same fp16-rounded weights (open_clip loads OpenAI's and casts)."""
    torch.manual_seed(0)
    reference = _perturb(open_clip.model.CLIP(**OPEN_CLIP_CFG))
    for key, value in OPENAI_ENTRIES.items():  # (open_clip keeps two as ints, read by no forward)
        reference.__dict__.pop(key, None)
        reference.register_buffer(key, torch.tensor(value))
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(copy.deepcopy(reference).half()), str(path))
    reference = reference.half().float().eval()  # the weights the archive holds, in fp32

    checkpoint = read_clip_checkpoint(path, given=dict(vision_heads=4, text_heads=3))  # (widths of no 64-wide heads)
    assert checkpoint.weights == path and not checkpoint.holds_tokenizer
    sizes = {k: v for k, v in OPENAI_SMALL.items() if k not in ("vision_heads", "text_heads")}
    assert checkpoint.stated == dict(sizes, activation="quick_gelu")  # its tensors' sizes, QuickGELU for OpenAI's
    ours = clip_model(pretrained=path, **OPENAI_SMALL).eval()
    assert ours.logit_scale.dtype == torch.float32
    images, (ids, _) = torch.randn(2, 3, 32, 32), captions([5, 16], 16, vocab=99, bos=97, eos=98)
    with torch.no_grad():
        assert_close(ours.encode_image(images), reference.encode_image(images, normalize=True), atol=1e-4, rtol=0)
        assert_close(ours.encode_text(ids), reference.encode_text(ids, normalize=True), atol=1e-4, rtol=0)
    assert_close(ours.logit_scale, reference.logit_scale, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"were trained with QuickGELU: build with activation='quick_gelu'"):
        clip_model(pretrained=path, **OPENAI_SMALL, activation="gelu")


def test_hugging_face_weights_alone_need_their_config_or_an_activation(hf_clip, tmp_path):
    shutil.copy(hf_clip / "model.safetensors", tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="config.json beside the weights .* or activation="):
        read_clip_checkpoint(tmp_path / "weights.safetensors")
    given = dict(activation="quick_gelu", vision_heads=4, text_heads=4)  # (widths of no 64-wide heads)
    checkpoint = read_clip_checkpoint(tmp_path / "weights.safetensors", given=given)
    told = "vision_width vision_layers vision_mlp_dim text_width text_layers text_mlp_dim embed_dim image_size"
    assert checkpoint.stated == {k: HF_STATED[k] for k in [*told.split(), "patch_size", "context_length", "vocab_size"]}


def test_a_torchflava_run_and_its_export_state_the_arguments_the_run_recorded(tmp_path):
    export = tmp_path / "run" / "model"
    export.mkdir(parents=True)
    tokenizer = WordPieceTokenizer.train(["a red circle", "a blue square above it"], vocab_size=40)
    kwargs = dict(clip_model_arguments(**dict(EXPORT, vocab_size=tokenizer.vocab_size, eos_token_id=3)))
    save_file({k: v.contiguous() for k, v in clip_model(**kwargs).state_dict().items()}, export / "clip.safetensors")
    (export / "clip_config.json").write_text(json.dumps({**kwargs, "init_std": None}))
    tokenizer.save(export)
    stated = {k: v for k, v in kwargs.items() if k != "init_std"}
    for path in (tmp_path / "run", export, export / "clip.safetensors"):
        checkpoint = read_clip_checkpoint(path)
        assert checkpoint.weights == export / "clip.safetensors" and checkpoint.directory == export, path
        assert checkpoint.stated == stated and checkpoint.holds_tokenizer, path
        assert checkpoint.vocab_size == tokenizer.vocab_size and checkpoint.end_token(tokenizer.vocab_size) == 3
        assert checkpoint.tokenizer_misfits(WordPieceTokenizer.from_directory(export)) == []
    assert checkpoint.model_arguments(tokenizer) == {**kwargs, "init_std": 0.02}


EXPORT = dict(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2)
EXPORT.update(vision_mlp_dim=24, text_width=16, text_layers=1, text_heads=2, text_mlp_dim=24, context_length=12)


def test_an_http_url_is_not_read_and_a_malformed_one_is_told_without_a_connection():
    url = "http://127.0.0.1:9/clip.safetensors"  # the discard port: nothing answers there
    assert is_remote(url) and is_remote("https://host/w.bin") and is_remote("ftp://host/w.bin")
    assert not is_remote("file:///tmp/w.bin") and not is_remote("/tmp/w.bin") and not is_remote(None)
    with pytest.raises(ValueError, match=r"^checkpoint: only local checkpoints are read .* got the URL 'http://127"):
        read_clip_checkpoint(url)
    assert check_url(url) == "clip.safetensors" and check_url("https://host/a/w%20b.bin") == "w b.bin"
    for bad in ("ftp://host/w.bin", "http://host/", "http://host/a/../w.bin", "http://host/a%2Fw.bin"):
        with pytest.raises(ValueError, match="^checkpoint URLs must"):
            check_url(bad)


def test_model_arguments_take_the_vocabulary_keys_given_or_none(tmp_path):
    """Found by an adversarial review: model_arguments(tokenizer, eos_token_id=None) (None: not set, as
    documented; e.g. a whole clip_model section passed) raised TypeError "got multiple values for keyword
    argument 'eos_token_id'", and so did any vocab_size or eos_token_id the checkpoint does not state."""
    hub = tmp_path / "hub"
    _open_clip_hub_directory(hub)  # states vocab_size 99, no end token
    checkpoint = read_clip_checkpoint(hub)
    tokenizer = _vocab(tmp_path / "v99.txt", 99)  # [SEP] is 3
    plain = checkpoint.model_arguments(tokenizer)
    assert (plain["vocab_size"], plain["eos_token_id"]) == (99, 3)
    assert checkpoint.model_arguments(tokenizer, eos_token_id=None, vocab_size=None, text_layers=None) == plain
    assert checkpoint.model_arguments(tokenizer, eos_token_id=98)["eos_token_id"] == 98  # the caller's


TOLD = ("vision_width", "patch_size", "vision_layers", "vision_mlp_dim", "text_width", "text_layers", "text_mlp_dim")
TOLD += ("vocab_size", "context_length", "embed_dim", "image_size")


def test_the_sizes_the_weights_hold_are_told_by_their_shapes_in_each_layout(hf_clip, tmp_path):
    """What the CLIP recipe checks a model section against before any work: each layout's names, the
    projections' orientation (open_clip's (D, P)), the layer counts; the heads are not told."""
    hub = tmp_path / "hub"
    _open_clip_hub_directory(hub)
    checkpoint = read_clip_checkpoint(hub)  # the weights file clip_model reads, its header peeked
    assert tuple(checkpoint.tensors["visual.conv1.weight"].shape) == (32, 3, 8, 8)
    assert checkpoint.tensors["visual.conv1.weight"].is_meta
    told = told_sizes(checkpoint.tensors)
    assert {k: told[k][0] for k in TOLD} == dict(zip(TOLD, (32, 8, 2, 48, 24, 2, 48, 99, 16, 20, 32)))
    assert told["embed_dim"][1:] == ("visual.proj", (32, 20)) and "vision_heads" not in told
    assert told["text_layers"][1:] == ("transformer.resblocks.1.mlp.c_fc.weight", (48, 24))  # the last layer's

    checkpoint = read_clip_checkpoint(hf_clip)  # Hugging Face's names, (P, D) projections
    told = told_sizes(checkpoint.tensors)
    assert {k: told[k][0] for k in TOLD} == {k: HF_STATED[k] for k in TOLD}
    assert told["vision_width"][1:] == ("vision_model.embeddings.class_embedding", (32,))
    kwargs = checkpoint.model_arguments(CLIPTokenizer.from_directory(hf_clip))
    assert checkpoint.size_misfits(kwargs) == []
    checkpoint.check_weights(kwargs)  # every key and shape maps onto the model built on the meta device
    assert checkpoint.size_misfits({**kwargs, "vision_width": 64, "text_layers": 3}) == [
        SizeMisfit("vision_width", 32, 64, "vision_model.embeddings.class_embedding", (32,)),
        SizeMisfit("text_layers", 2, 3, "text_model.encoder.layers.1.mlp.fc1.weight", (64, 32)),
    ]
    with pytest.raises(ValueError, match=r"^state_dict \(hf layout\) does not match the model: missing 16 key"):
        checkpoint.check_weights({**kwargs, "text_layers": 3})
    assert CLIPCheckpoint(checkpoint.weights, checkpoint.stated, hf_clip).size_misfits({"vision_width": 64}) == []

    with torch.device("meta"):  # ours, under DDP's prefix
        ours = clip_model(**EXPORT, vocab_size=40).state_dict()
    told = told_sizes({f"module.{k}": v for k, v in ours.items()})
    assert {k: told[k][0] for k in TOLD} == {**{k: EXPORT[k] for k in TOLD if k != "vocab_size"}, "vocab_size": 40}
    assert told_sizes({"encoder.weight": torch.zeros(2)}) == {}  # not CLIP's: nothing told
