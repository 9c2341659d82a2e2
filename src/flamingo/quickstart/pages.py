"""The world as web pages in WARC files, alt-text pairs, and the evaluation sets in the real benchmarks' formats.

Pages are HTML with ``<img src="file:///...png">`` pictures stored as local files (the builder reads them
through ``FetchConfig.local_root``). Each sentence sits in its own ``<p>`` with its picture in front, but the
builder does not know that: it places pictures by its own CLIP similarities. Three page kinds, one WARC each:
caption pages, Q&A pages and bursty pages (pets and products with invented names, mentioned again).

Alt-text pairs (``pairs/alt-text.csv``: a ``file://`` URL and the picture's alt text) play LAION's part: the
converter (``flamingo data convert pairs``) turns them into img2dataset-layout pair shards.

Evaluation files (written under ``eval/``): captions as a Karpathy-split JSON, VQA as question and annotation
JSONs, each with a ``train`` split (the demonstration pool) and a ``test`` split of fresh pictures.
"""

from __future__ import annotations

import html
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flamingo.quickstart import text, world

PAGE_KINDS = ("captions", "qa", "bursty")
DEFAULT_PICTURES = {"captions": (4, 6), "qa": (4, 10), "bursty": (7, 8)}
"""Pictures per page of each kind (a range)."""


@dataclass
class Page:
    """One web page: a title, an intro, (picture, sentence) items and an outro."""

    url: str
    title: str
    intro: str
    items: list[tuple[Path, str]]
    outro: str

    def to_html(self) -> str:
        paragraphs = [f"<h1>{html.escape(self.intro)}</h1>"]
        for path, sentence in self.items:
            src = html.escape(path.resolve().as_uri(), quote=True)
            paragraphs.append(f'<p><img src="{src}" alt=""> {html.escape(sentence)}</p>')
        paragraphs.append(f"<p>{html.escape(self.outro)}</p>")
        body = "\n".join(paragraphs)
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title></head>"
            f"<body><nav><a href='/'>Home</a> <a href='/about'>About</a></nav><article>\n{body}\n</article>"
            "<footer>World pages, drawn for the flamingo-vlm quickstart.</footer></body></html>"
        )


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def caption_page(index: int, rng: random.Random, folder: Path, pictures: tuple[int, int]) -> Page:
    """``pictures`` (a range) of training classes, one caption sentence each."""
    items = []
    for i in range(rng.randint(*pictures)):
        scene = world.random_scene(rng)
        path = _save(world.draw_scene(scene, rng), folder / f"c{index:05d}_{i}.png")
        items.append((path, text.caption_sentence(scene, rng)))
    url = f"http://world.quickstart/drawings/{index}.html"
    return Page(url, "Drawings", rng.choice(text.CAPTION_PAGE_INTROS), items, rng.choice(text.OUTROS))


def qa_page(
    index: int,
    rng: random.Random,
    folder: Path,
    pictures: tuple[int, int],
    kinds: tuple[str, ...] = text.QUESTION_KINDS,
    whole_answers: float = 0.0,
    style: str = "marked",
) -> Page:
    """``pictures`` (a range), one question-and-answer sentence each, about one of ``kinds``.

    ``whole_answers``: the chance that the page answers in sentences (``answer: there are three.``) rather than
    in words (``answer: three.``); a page keeps one style throughout. ``style``: see :func:`text.qa_sentence`.
    """
    whole = whole_answers > 0 and rng.random() < whole_answers  # no draw at 0: those worlds stay as they were
    items = []
    for i in range(rng.randint(*pictures)):
        scene = world.random_scene(rng)
        path = _save(world.draw_scene(scene, rng), folder / f"q{index:05d}_{i}.png")
        items.append((path, text.qa_sentence(scene, rng.choice(kinds), whole, style)))
    url = f"http://world.quickstart/quiz/{index}.html"
    return Page(url, "Quiz", "Test your eyes.", items, rng.choice(text.OUTROS))


def bursty_page(
    index: int,
    rng: random.Random,
    folder: Path,
    names: list[str],
    objects: tuple[int, int] = (2, 3),
    pictures: tuple[int, int] = (7, 8),
    cast_intro: float = 0.0,
    pet_quiz: float = 0.0,
) -> Page:
    """``objects`` (a range) of distinct training classes with invented names, ``pictures`` (a range) in all.

    Mostly repeats: a name right after a picture is predictable from the page only when that object was shown
    before, and first mentions teach the adapters to guess some training name instead. With 2-4 objects in 5-8
    pictures (about 45% first mentions) a fifth of 4-shot answers were training names; with 2-3 in 7-8 (about
    a third) 4-shot accuracy rose from 0.62 to 0.83 in runs at 1 thread (held-out combinations 0.65 to 0.86).
    With probability ``cast_intro`` the intro lists the cast (``Meet my pets: Zorp, Blix.``), so that a first
    mention is a name from the context, which is what a guess should be in an episode.
    """
    if not 1 <= objects[0] <= objects[1] <= pictures[0] <= pictures[1]:
        raise ValueError(
            f"bursty pages need 1 <= objects <= pictures as ranges, got {objects} and {pictures}"
        )
    classes = rng.sample(world.training_combos(), rng.randint(*objects))
    cast = list(zip(rng.sample(names, len(classes)), classes))
    intro = rng.choice(text.BURSTY_INTROS)
    if cast_intro and rng.random() < cast_intro:
        intro = f"{intro[:-1]}: {', '.join(name.capitalize() for name, _ in cast)}."
    mentions = cast + [rng.choice(cast) for _ in range(rng.randint(*pictures) - len(cast))]
    rng.shuffle(mentions)
    quiz = pet_quiz > 0 and rng.random() < pet_quiz  # no draw at 0: those worlds stay as they were
    items = []
    for i, (name, (shape, colour)) in enumerate(mentions):
        scene = world.Scene(shape, colour, 1)
        path = _save(world.draw_scene(scene, rng), folder / f"b{index:05d}_{i}.png")
        sentence = text.name_sentence(name, scene) if quiz else text.bursty_sentence(name, scene, rng)
        items.append((path, sentence))
    url = f"http://world.quickstart/{'pet-quiz' if quiz else 'friends'}/{index}.html"
    return Page(url, "Pet quiz" if quiz else "Friends", intro, items, rng.choice(text.OUTROS))


def write_warc(pages: list[Page], path: Path) -> Path:
    """A gzipped WARC with one HTML ``response`` record per page."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        writer = WARCWriter(stream, gzip=True)
        for page in pages:
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            payload = io.BytesIO(page.to_html().encode("utf-8"))
            writer.write_record(
                writer.create_warc_record(page.url, "response", payload=payload, http_headers=headers)
            )
    return path


def make_pages(
    root: Path,
    kind: str,
    count: int,
    names: list[str],
    seed: int,
    pictures: tuple[int, int] | None = None,
    objects: tuple[int, int] = (2, 3),
    cast_intro: float = 0.0,
    qa_kinds: tuple[str, ...] = text.QUESTION_KINDS,
    qa_whole_answers: float = 0.0,
    qa_style: str = "marked",
    pet_quiz: float = 0.0,
) -> list[Page]:
    """``count`` pages of one kind, pictures under ``root/images/<kind>``.

    ``pictures``: pictures per page, a range (None: :data:`DEFAULT_PICTURES` of the kind); ``objects``: named
    objects per bursty page, a range; ``cast_intro``: share of bursty pages whose intro lists the cast's names;
    ``qa_kinds``: the question kinds quiz pages ask; ``qa_whole_answers``: share of quiz pages that answer in
    sentences; ``qa_style``: how quiz pages write questions and answers (:func:`text.qa_sentence`);
    ``pet_quiz``: share of bursty pages written as pet quizzes (:func:`bursty_page`).
    """
    if kind not in PAGE_KINDS:
        raise ValueError(f"unknown page kind {kind!r}; use one of {PAGE_KINDS}")
    pictures = tuple(pictures or DEFAULT_PICTURES[kind])
    if not 1 <= pictures[0] <= pictures[1]:
        raise ValueError(f"pictures per {kind} page must be a range (low, high) with 1 <= low <= high")
    rng = random.Random(f"pages-{kind}-{seed}")
    folder = root / "images" / kind
    if kind == "captions":
        return [caption_page(i, rng, folder, pictures) for i in range(count)]
    if kind == "qa":
        bad = sorted(set(qa_kinds) - set(text.QUESTION_KINDS))
        if qa_style not in text.QA_STYLES:
            raise ValueError(f"unknown quiz style {qa_style!r}; use one of {text.QA_STYLES}")
        if bad or not qa_kinds:
            raise ValueError(
                f"quiz question kinds {list(qa_kinds)}: use a non-empty subset of {text.QUESTION_KINDS}"
            )
        return [
            qa_page(i, rng, folder, pictures, tuple(qa_kinds), qa_whole_answers, qa_style)
            for i in range(count)
        ]
    if not 0.0 <= pet_quiz <= 1.0:
        raise ValueError(f"pet_quiz is a share of bursty pages, between 0 and 1; got {pet_quiz}")
    return [bursty_page(i, rng, folder, names, objects, pictures, cast_intro, pet_quiz) for i in range(count)]


def write_world_warcs(
    root: Path,
    counts: dict[str, int],
    names: list[str],
    seed: int,
    files: int = 3,
    pictures: dict[str, tuple[int, int]] | None = None,
    objects: tuple[int, int] = (2, 3),
    cast_intro: float = 0.0,
    qa_kinds: tuple[str, ...] = text.QUESTION_KINDS,
    qa_whole_answers: float = 0.0,
    qa_style: str = "marked",
    pet_quiz: float = 0.0,
) -> list[Path]:
    """All pages, shuffled like a crawl, in ``files`` WARCs ``root/warc/world-<i>.warc.gz``.

    ``pictures``: pictures per page by kind (kinds left out keep :data:`DEFAULT_PICTURES`); ``objects``: named
    objects per bursty page; ``cast_intro``: share of bursty pages whose intro lists the cast's names;
    ``qa_kinds``: the question kinds quiz pages ask; ``qa_whole_answers``: share of quiz pages that answer in
    sentences; ``qa_style``: how quiz pages write questions and answers (:func:`text.qa_sentence`);
    ``pet_quiz``: share of bursty pages written as pet quizzes (:func:`bursty_page`).
    """
    pages = []
    for kind, count in counts.items():
        pages.extend(
            make_pages(
                root,
                kind,
                count,
                names,
                seed,
                (pictures or {}).get(kind),
                objects,
                cast_intro,
                qa_kinds,
                qa_whole_answers,
                qa_style,
                pet_quiz,
            )
        )
    random.Random(f"crawl-{seed}").shuffle(pages)
    return [
        write_warc(pages[i::files], root / "warc" / f"world-{i}.warc.gz")
        for i in range(min(files, len(pages)))
    ]


def write_alt_text_pairs(root: Path, count: int, seed: int) -> Path:
    """``count`` pictures under ``root/images/pairs`` and ``root/pairs/alt-text.csv`` (``url``, ``caption``).

    The alt text is the bare description (``two red triangles``), like a short LAION alt text.
    """
    import csv

    rng = random.Random(f"pairs-{seed}")
    folder = root / "images" / "pairs"
    path = root / "pairs" / "alt-text.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["url", "caption"])
        for i in range(count):
            scene = world.random_scene(rng)
            image = _save(world.draw_scene(scene, rng), folder / f"p{i:05d}.png")
            writer.writerow([image.resolve().as_uri(), scene.caption()])
    return path


# ------------------------------------------------------------------------------------------ evaluation files


def write_caption_set(root: Path, train: int, test: int, seed: int) -> Path:
    """``captions/dataset_world.json`` in the Karpathy layout (``images[]`` with split, filename, sentences)."""
    rng = random.Random(f"eval-captions-{seed}")
    items = []
    for i in range(train + test):
        scene = world.random_scene(rng)
        name = f"cap_{i:06d}.png"
        _save(world.draw_scene(scene, rng), root / "captions" / "images" / name)
        items.append(
            {
                "imgid": i,
                "split": "train" if i < train else "test",
                "filepath": "",
                "filename": name,
                "sentences": [{"raw": scene.caption(), "tokens": scene.caption().split()}],
            }
        )
    path = root / "captions" / "dataset_world.json"
    path.write_text(json.dumps({"dataset": "world", "images": items}))
    return path


def vqa_cast(seed: int, names: list[str], size: int) -> list[tuple[str, tuple[str, str]]]:
    """The pets of the VQA set's name questions: ``size`` (name, (shape, colour)) with distinct classes."""
    if not 1 <= size <= len(names):
        raise ValueError(f"the VQA cast needs between 1 and {len(names)} pets, got {size}")
    rng = random.Random(f"eval-vqa-cast-{seed}")
    return list(zip(rng.sample(names, size), rng.sample(world.training_combos(), size)))


def write_vqa_set(
    root: Path,
    train: int,
    test: int,
    seed: int,
    name_share: float = 0.0,
    cast: list[tuple[str, tuple[str, str]]] | None = None,
) -> dict[str, Path]:
    """VQA question and annotation JSONs per split (10 identical answers each), pictures ``img_<id>.png``.

    ``name_share``: the share of questions that ask for the name of one of the ``cast`` pets (a picture of
    that pet, :func:`text.name_question`, question type ``name``). The pictures alone cannot answer them: the
    name is known only from demonstrations that asked about the same pet, as in OK-VQA, whose answers need
    knowledge from outside the picture.
    """
    if not 0.0 <= name_share <= 1.0:
        raise ValueError(f"name_share is a share of questions, between 0 and 1; got {name_share}")
    if name_share and not cast:
        raise ValueError("name questions need a cast of pets (vqa_cast)")
    rng = random.Random(f"eval-vqa-{seed}")
    paths = {}
    for split, count, offset in (("train", train, 0), ("test", test, train)):
        questions, annotations = [], []
        for i in range(offset, offset + count):
            if name_share and rng.random() < name_share:  # no draw at 0: those sets stay as they were
                name, combo = rng.choice(cast)
                scene = world.Scene(*combo, 1)
                _save(world.draw_scene(scene, rng), root / "vqa" / "images" / f"img_{i:06d}.png")
                kind, question, answer = "name", text.name_question(scene), name
            else:
                scene = world.random_scene(rng)
                _save(world.draw_scene(scene, rng), root / "vqa" / "images" / f"img_{i:06d}.png")
                kind = rng.choice(text.QUESTION_KINDS)
                question, answer = text.question_answer(scene, kind)
            questions.append({"question_id": i, "image_id": i, "question": question})
            annotations.append(
                {
                    "question_id": i,
                    "image_id": i,
                    "question_type": kind,
                    "answer_type": "number" if kind == "count" else "other",
                    "multiple_choice_answer": answer,
                    "answers": [{"answer": answer, "answer_id": k + 1} for k in range(10)],
                }
            )
        q_path, a_path = root / "vqa" / f"questions_{split}.json", root / "vqa" / f"annotations_{split}.json"
        q_path.write_text(json.dumps({"questions": questions}))
        a_path.write_text(json.dumps({"annotations": annotations}))
        paths[split] = q_path
    return paths
