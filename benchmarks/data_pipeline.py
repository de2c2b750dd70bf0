"""The FLAVA-full data pipeline on streamed shards: samples/s per CPU core of each stage, and of the whole
loader with ``data.num_workers`` 0, 1 and 2, against what the FLAVA-full training step consumes.

Writes shards of JPEG photos (scikit-image's sample photos, cropped and resized to CC3M-like sizes, quality
90) with 10-20 word captions into a temporary directory with ``webdataset.ShardWriter``, then measures,
one thread:

* ``read + decode``: streaming the shards (webdataset) and decoding image and caption
  (``torchflava.data.decode.decode_image``), as ``StreamingBatches`` does;
* ``crop``: FLAVA's random resized crop to 224 px and the 112 px codebook view;
* ``codebook``: the DALL-E dVAE encoder at FLAVA-full's size (``dalle_encoder()``), 112 px -> 14 x 14 ids;
* ``tokenize + masking``: WordPiece to 77 ids, BERT masking, plus the BEiT block masks;
* ``pipeline``: ``StreamingBatches`` with ``FLAVAPretrainingCollator`` end to end in the loading process,
  with the codebook (what the recipe does) and without it (the model's own codebook in the step);

then the loader (``torch.utils.data.DataLoader`` over ``StreamingBatches``) with 0, 1 and 2 worker
processes. The step's need is ``--step-batch`` samples every ``--step-seconds`` (default: this machine's
FLAVA-full fp32 pair step of ``pretrain_step.py``, 4 pairs in 8.63 s); ``cores to feed`` is that need over
the per-core pipeline rate, for the step given or for ``--target-samples-per-s``.

    python benchmarks/data_pipeline.py --samples 256 --json benchmarks/results/data_pipeline-....json
"""

import argparse
import io
import json
import platform
import tempfile
import time

from PIL import Image
import torch
from torch.utils.data import DataLoader

from torchflava.data.flava import FLAVAPretrainingCollator
from torchflava.data.streaming import StreamingBatches, raw_samples
from torchflava.data.tokenizer import WordPieceTokenizer
from torchflava.data.transforms import PretrainingImageTransform
from torchflava.modules.codebook import dalle_encoder

WORDS = (
    "a man woman child dog cat bicycle street red blue green old small large wooden table standing next to the "
    "window with light on in of at near city park river boat train station bright evening morning photo view"
).split()


def photos() -> list[Image.Image]:
    """scikit-image's bundled RGB sample photos (no download)."""
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry")
    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names]


def write_shards(root: str, samples: int, shards: int) -> str:
    """``samples`` JPEG + caption pairs in ``shards`` shards; returns the brace pattern naming them."""
    import random

    import webdataset as wds

    rng, sources = random.Random(0), photos()
    per_shard = -(-samples // shards)
    with wds.ShardWriter(f"{root}/bench-%03d.tar", maxcount=per_shard, verbose=0) as writer:
        for index in range(samples):
            photo = sources[index % len(sources)]
            width, height = photo.size
            box_w, box_h = rng.randint(width // 2, width), rng.randint(height // 2, height)
            left, top = rng.randint(0, width - box_w), rng.randint(0, height - box_h)
            size = rng.choice([(500, 375), (375, 500), (480, 480), (640, 427)])
            image = photo.crop((left, top, left + box_w, top + box_h)).resize(size, Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 20)))
            writer.write({"__key__": f"{index:06d}", "jpg": buffer.getvalue(), "txt": caption})
    return f"{root}/bench-{{000..{shards - 1:03d}}}.tar"


def per_second(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="samples per loader batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step-seconds", type=float, default=8.63, help="FLAVA-full step time on this machine")
    parser.add_argument("--step-batch", type=int, default=4, help="samples the step consumes")
    parser.add_argument("--target-samples-per-s", type=float, default=None, help="another step's need, e.g. a GPU")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as root:
        spec = write_shards(root, args.samples, args.shards)
        captions_for_vocab = [" ".join(WORDS)] * 4
        tokenizer = WordPieceTokenizer.train(captions_for_vocab, vocab_size=400)
        transform = PretrainingImageTransform(224, 112, scale=(0.9, 1.0))
        collator = FLAVAPretrainingCollator(
            tokenizer,
            transform,
            codebook=dalle_encoder(),
            patch_grid=14,
            max_text_length=77,
            num_masked_patches=75,
            min_mask_block=16,
        )

        def stream(num_workers: int) -> StreamingBatches:
            return StreamingBatches(
                spec, collator, batch_size=args.batch, num_workers=num_workers, seed=0, shuffle_buffer=100
            )

        reader = stream(0)
        figures: dict = {}
        start = time.perf_counter()
        samples = [reader.decode(url, raw) for url in reader.urls for raw in raw_samples(url, [])]
        figures["read + decode"] = per_second(len(samples), time.perf_counter() - start)

        seeds = list(range(len(samples)))
        start = time.perf_counter()
        crops = [transform(sample.image, seed) for sample, seed in zip(samples, seeds)]
        figures["crop (224 px + 112 px codebook view)"] = per_second(len(crops), time.perf_counter() - start)

        pixels = torch.stack([codebook_view for _, codebook_view in crops])
        collator.codebook.tokens(pixels[: args.batch].contiguous(memory_format=torch.channels_last))  # warm-up
        start = time.perf_counter()
        with torch.no_grad():
            for first in range(0, len(pixels), args.batch):
                chunk = pixels[first : first + args.batch].contiguous(memory_format=torch.channels_last)
                collator.codebook.tokens(chunk)
        figures["codebook (dVAE encoder, 112 px)"] = per_second(len(pixels), time.perf_counter() - start)

        start = time.perf_counter()
        for first in range(0, len(samples), args.batch):
            rows = samples[first : first + args.batch]
            collator.texts([s.text for s in rows], seeds[first : first + args.batch])
        figures["tokenize + MLM masking"] = per_second(len(samples), time.perf_counter() - start)

        batches = args.samples // args.batch
        iterator = iter(stream(0))
        next(iterator)  # warm-up
        start = time.perf_counter()
        for _ in range(batches - 1):
            next(iterator)
        figures["pipeline, one core (all of the above, block masks, ITM)"] = per_second(
            (batches - 1) * args.batch, time.perf_counter() - start
        )
        del iterator
        without = StreamingBatches(
            spec,
            FLAVAPretrainingCollator(
                tokenizer, transform, codebook=None, patch_grid=14, max_text_length=77, num_masked_patches=75
            ),
            batch_size=args.batch,
            seed=0,
            shuffle_buffer=100,
        )
        iterator = iter(without)
        next(iterator)
        start = time.perf_counter()
        for _ in range(batches - 1):
            next(iterator)
        figures["pipeline without the codebook (codebook pixels to the step)"] = per_second(
            (batches - 1) * args.batch, time.perf_counter() - start
        )
        del iterator

        loader: dict = {}
        for workers in args.workers:
            data_loader = DataLoader(stream(workers), batch_size=None, num_workers=workers, collate_fn=lambda b: b)
            iterator = iter(data_loader)
            for _ in range(max(workers, 1)):  # every worker's first batch: start-up
                next(iterator)
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            loader[workers] = per_second(batches * args.batch, time.perf_counter() - start)
            del iterator, data_loader

    need = args.target_samples_per_s or args.step_batch / args.step_seconds
    per_core = figures["pipeline, one core (all of the above, block masks, ITM)"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread",
        "torch": torch.__version__,
        "samples": args.samples,
        "batch": args.batch,
        "stages_samples_per_s_one_core": figures,
        "loader_samples_per_s_by_num_workers": loader,
        "step_needs_samples_per_s": need,
        "cores_to_feed_the_step": need / per_core,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
