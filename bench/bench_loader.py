"""Training data loader: read, decode and batch MMC4-like shards, ours against the reference open-flamingo==2.0.1.

    .venv/bin/python bench/bench_loader.py                  # 1 and 2 workers, 224 px, batches of 16
    .venv/bin/python bench/bench_loader.py --docs 96 --batches 4   # a quick check

Builds OpenFlamingo-style MMC4 tar shards (one ``<id>.json`` per document, images base64-encoded in
``image_info[i].image_base64``, sentences matched to images through ``matched_text_index`` and the similarity
matrix) from the photographs that ship in scikit-image's wheel, randomly cropped, resized to 256-640 px and
re-encoded as JPEG, 2-10 per document, with a few hundred words of text. Then both pipelines read the same shards
with the same 224 px CLIP transform and tokenizer, 256 tokens and at most 6 images per document:

- ours: :class:`flamingo.data.loader.SourceLoader` with ``num_workers`` forked worker processes;
- the reference: ``open_flamingo.train.data.get_mmc4_dataset`` (its WebDataset pipeline, ``preprocess_interleaved``
  and ``preprocess_image``) in its ``WebLoader`` with ``workers`` worker processes.

Each is timed over ``--batches`` batches after its first one (worker start-up is not counted): images per second
(images the model sees: not the reference's zero padding, nor its images whose ``<image>`` token fell past the
256 tokens) and documents per second. Writes ``bench/results/loader.json``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import random
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_log

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "cat",
    "immunohistochemistry",
    "hubble_deep_field",
)
_TEXT = (
    "the a of and to in is was for on with as by at from that this it an be are were which or has have had its "
    "their new one two first more most other some time year people city world life day work home school family "
    "water food house story music game team season market company report study research book film art history "
    "light color night morning street garden river mountain coast island forest field road bridge train car "
    "photo picture image view scene detail shown here behind near under over after before during while where "
    "small large old young bright dark red blue green white black golden quiet busy famous local public private "
    "make take show find give look see use build open start run walk visit enjoy share learn watch travel cook"
)
WORDS = _TEXT.split()
IMAGE, EOC, PAD, EOS, UNK = "<image>", "<|endofchunk|>", "<PAD>", "<|endoftext|>", "<unk>"


def make_tokenizer():
    """A word-level tokenizer over the benchmark's words (no downloads) with OpenFlamingo's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate([EOS, UNK, ".", ",", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, unk_token=UNK)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE, EOC], "pad_token": PAD})
    return tokenizer


def reference_tokenizer():
    """:func:`make_tokenizer` with the ``additional_special_tokens(_ids)`` lists of transformers 4, which the
    reference's ``preprocess_interleaved`` reads to find ``<image>`` (transformers 5 has them no more)."""
    tokenizer = make_tokenizer()
    ids = tokenizer.convert_tokens_to_ids([IMAGE, EOC])
    extended = type(
        "ReferenceTokenizer",
        (type(tokenizer),),
        {"additional_special_tokens": [IMAGE, EOC], "additional_special_tokens_ids": ids},
    )
    tokenizer.__class__ = extended
    return tokenizer


def photographs() -> list[Image.Image]:
    import skimage.data

    out = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        if array.ndim == 2:
            array = array[..., None].repeat(3, axis=2)
        out.append(Image.fromarray(array[..., :3]).convert("RGB"))
    return out


def random_jpeg(rng: random.Random, photos: list[Image.Image]) -> bytes:
    """A random crop of a photograph, resized so its longer side is 256-640 px, as a JPEG."""
    photo = rng.choice(photos)
    width, height = photo.size
    cw, ch = int(width * rng.uniform(0.4, 1.0)), int(height * rng.uniform(0.4, 1.0))
    left, top = rng.randrange(width - cw + 1), rng.randrange(height - ch + 1)
    crop = photo.crop((left, top, left + cw, top + ch))
    side = rng.randint(256, 640)
    scale = side / max(cw, ch)
    crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BILINEAR)
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=rng.randint(75, 92))
    return buffer.getvalue()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 24))]
    return " ".join(words).capitalize() + "."


def build_shards(
    folder: Path, docs: int, per_shard: int, seed: int = 0, sentences: tuple[int, int] = (15, 35)
) -> list[Path]:
    """MMC4-like shards of ``docs`` documents: 2-10 JPEGs each and ``sentences`` (fewest, most) sentences of 8-24
    words (the default: a few hundred words)."""
    from flamingo.data.schema import EncodedImage, ImageInfo, InterleavedDocument
    from flamingo.data.synthetic import write_mmc4_tar

    rng, photos = random.Random(seed), photographs()
    documents = []
    for index in range(docs):
        num_sentences = rng.randint(*sentences)
        num_images = rng.randint(2, min(10, num_sentences))
        matched = rng.sample(range(num_sentences), num_images)
        infos, images, matrix = [], [], []
        for image_index, sentence_index in enumerate(matched):
            data = random_jpeg(rng, photos)
            row = [round(rng.uniform(0.0, 0.2), 4) for _ in range(num_sentences)]
            row[sentence_index] = round(rng.uniform(0.26, 0.4), 4)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
            infos.append(
                ImageInfo(
                    member=f"{image_index}.jpg",
                    matched_text_index=sentence_index,
                    matched_sim=row[sentence_index],
                    raw_url=f"https://example.com/{index}/{image_index}.jpg",
                    width=width,
                    height=height,
                )
            )
            images.append(EncodedImage(data, "jpg"))
            matrix.append(row)
        documents.append(
            InterleavedDocument(
                id=f"doc{index:06d}",
                text_list=[sentence(rng) for _ in range(num_sentences)],
                image_info=infos,
                similarity_matrix=matrix,
                url=f"https://example.com/{index}",
                source="bench",
                images=images,
            )
        )
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_mmc4_tar(documents[start : start + per_shard], folder / f"mmc4-{start // per_shard:06d}.tar")
        for start in range(0, docs, per_shard)
    ]


def clip_transform(size: int):
    import open_clip

    from flamingo.model.vision import OPENAI_MEAN, OPENAI_STD

    return open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)


def time_batches(batches, count: int, images_of) -> dict[str, float]:
    """Images and documents per second over ``count`` batches after the first (the first starts the workers)."""
    next(batches)
    images = samples = done = 0
    started = time.perf_counter()
    for batch in batches:
        images_in, samples_in = images_of(batch)
        images, samples, done = images + images_in, samples + samples_in, done + 1
        if done == count:
            break
    seconds = time.perf_counter() - started
    return {"batches": done, "images": images, "samples": samples, "seconds": seconds}


def ours(shards: list[Path], workers: int, args) -> dict[str, float]:
    from flamingo.data import loader as loader_module
    from flamingo.data.loader import SourceConfig, SourceDataset, SourceLoader
    from flamingo.model.vision import apply_transform

    # In training the workers run at a lower priority than the step; here nothing else runs, and the reference's
    # workers keep the default priority, so ours do too (on a shared machine a niced worker would lose its core).
    loader_module._WORKER_NICENESS = 0

    tokenizer = make_tokenizer()
    config = SourceConfig(
        name="mmc4",
        shards=[str(p) for p in shards],
        batch_size=args.batch_size,
        max_tokens=256,
        max_images=6,
        min_image_bytes=11_000,  # the reference keeps images above 10 kB (len // 1000 > 10)
        sim_threshold=0.24,
        num_workers=workers,
    )
    dataset = SourceDataset(
        config,
        tokenizer,
        functools.partial(apply_transform, clip_transform(args.image_size)),
        tokenizer.convert_tokens_to_ids(IMAGE),
        tokenizer.convert_tokens_to_ids(EOC),
        seed=args.seed,
    )
    loader = SourceLoader(dataset, tokenizer.pad_token_id, prefetch=2, worker="process", trim_padding=True)

    def stream():
        while True:
            yield loader.next_batch()

    try:
        return time_batches(stream(), args.batches, lambda b: (int(b.image_mask.sum()), len(b)))
    finally:
        loader.close()


def reference_loader(shards: list[Path], workers: int, args, transform=None):
    """open_flamingo.train.data.get_mmc4_dataset's ``DataInfo`` as its train.py builds it (its ``data_utils`` is
    imported as a top-level module, so the package's folder goes on ``sys.path``); ``transform`` defaults to the
    224 px CLIP transform at ``args.image_size``."""
    import open_flamingo

    sys.path.insert(0, str(Path(open_flamingo.__file__).parent / "train"))
    import data_utils
    from open_flamingo.train.data import get_mmc4_dataset
    from webdataset.tariterators import tar_file_expander

    # webdataset 1.0 ends each shard's member stream with an empty dict, which the reference's own grouping
    # (written for webdataset 0.2) cannot take: the one shim, webdataset 0.2's behaviour (no end marker).
    data_utils.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)

    last = len(shards) - 1
    if [p.name for p in shards] != [f"mmc4-{i:06d}.tar" for i in range(last + 1)]:
        raise ValueError(
            f"the shards in {shards[0].parent} are not mmc4-000000.tar onwards; delete the folder"
        )
    names = {
        # Its shard list is a brace pattern (get_dataset_size expands one).
        "mmc4_shards": str(shards[0].parent / f"mmc4-{{000000..{last:06d}}}.tar"),
        "dataset_resampled": False,
        "train_num_samples_mmc4": 10**6,
        "seed": args.seed,
        "mmc4_textsim_threshold": 0.24,
        "mmc4_min_num_images": 1,
        "mmc4_max_num_images": 6,
        "batch_size_mmc4": args.batch_size,
        "workers": workers,
        "world_size": 1,
        "rank": 0,
    }
    namespace = types.SimpleNamespace(**names)
    return get_mmc4_dataset(namespace, transform or clip_transform(args.image_size), reference_tokenizer())


def reference(shards: list[Path], workers: int, args) -> dict[str, float]:
    """The reference's loader (:func:`reference_loader`), timed."""
    data = reference_loader(shards, workers, args)

    image_id = make_tokenizer().convert_tokens_to_ids(IMAGE)

    def images_of(batch: Any) -> tuple[int, int]:
        # (b, 6, c, h, w) pixels with zero-padded slots, and per sample (input_ids, attention_mask), stacked as
        # its training loop does: an image counts when its slot holds pixels and its <image> token survived
        # truncation (the reference decodes the others too, but the model never sees them).
        pixels = batch[0]
        input_ids = torch.stack([text[0] for text in batch[1]])
        slots = (pixels.flatten(2).abs().sum(-1) > 0).sum(1)
        markers = (input_ids.reshape(len(pixels), -1) == image_id).sum(1)
        return int(torch.minimum(slots, markers).sum()), pixels.shape[0]

    loader = data.dataloader
    try:
        return time_batches(iter(loader), args.batches, images_of)
    finally:
        del loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=256, help="documents in the generated shards")
    parser.add_argument("--per-shard", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="batches timed per run, after the first")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shards", default="", help="a folder to keep the shards in (default: a temporary one)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.shards or tempfile.mkdtemp(prefix="flamingo-bench-loader-"))
    shards = sorted(folder.glob("mmc4-*.tar")) or build_shards(folder, args.docs, args.per_shard, args.seed)
    sizes = [p.stat().st_size for p in shards]
    rows = []
    for workers in args.workers:
        for impl, run in (("reference", reference), ("ours", ours)):
            measured = run(shards, workers, copy.copy(args))
            seconds = max(measured["seconds"], 1e-9)
            rows.append(
                {
                    "impl": impl,
                    "workers": workers,
                    **measured,
                    "images_per_s": measured["images"] / seconds,
                    "samples_per_s": measured["samples"] / seconds,
                }
            )
            print(f"{impl:9s} workers={workers}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    report(rows, args, shards, sizes)


def report(rows: list[dict], args, shards: list[Path], sizes: list[int]) -> None:
    by = {(r["impl"], r["workers"]): r for r in rows}
    print(f"\n{'impl':10s} {'workers':>7s} {'images/s':>9s} {'docs/s':>8s} {'batches':>7s}")
    for r in rows:
        print(
            f"{r['impl']:10s} {r['workers']:7d} {r['images_per_s']:9.1f} {r['samples_per_s']:8.1f} "
            f"{r['batches']:7d}"
        )
    ratios: dict[str, float] = {}
    for workers in args.workers:
        if ("ours", workers) in by and ("reference", workers) in by:
            ratio = by["ours", workers]["images_per_s"] / by["reference", workers]["images_per_s"]
            ratios[f"ours_vs_reference_{workers}_workers"] = ratio
            print(f"ours / reference, {workers} worker(s): {ratio:.2f}x images/s")
    if ("ours", 1) in by and ("ours", 2) in by:
        ratios["ours_2_vs_1_workers"] = by["ours", 2]["images_per_s"] / by["ours", 1]["images_per_s"]
        print(f"ours, 2 workers / 1 worker: {ratios['ours_2_vs_1_workers']:.2f}x")
    ours_one = by.get(("ours", 1))
    if ours_one:
        per_core = ours_one["images_per_s"]
        ratios["cores_for_490_images_per_s"] = 490 / per_core
        ratios["cores_for_670_images_per_s"] = 670 / per_core
        print(
            f"one worker core: {per_core:.0f} images/s; 490-670 images/s needs {490 / per_core:.1f}-"
            f"{670 / per_core:.1f} worker cores"
        )
    result = {
        "settings": {
            "docs": args.docs,
            "shards": len(shards),
            "shard_mb": sum(sizes) / 2**20,
            "batch_size": args.batch_size,
            "batches": args.batches,
            "image_size": args.image_size,
            "max_tokens": 256,
            "max_images": 6,
        },
        "rows": rows,
        "ratios": ratios,
    }
    results_log.record(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
