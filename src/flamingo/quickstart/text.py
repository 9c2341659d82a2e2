"""The world's sentences, its word-level tokenizer, and the text-only corpus the small LM is pretrained on.

Three kinds of web page carry the pictures (see ``flamingo.quickstart.pages``):

- caption pages: ``Here is two red triangles.`` (each sentence names every visual attribute);
- Q&A pages: ``Question: what colour is the triangle? answer: red.`` (the answer is the one attribute the
  question leaves out, so it can only come from the picture);
- "bursty" pages about pets or products: ``Zorp, the red triangle, naps in the sun.``, with each object
  mentioned again later under the same name. The name is the first word of the sentence, so once the builder
  has put the picture before it, predicting the name needs the picture and the earlier mentions.
"""

from __future__ import annotations

import random
import re
from typing import Any

from flamingo.model.config import TokenConfig
from flamingo.prompts import PromptConfig, PromptTemplate
from flamingo.quickstart.world import COUNT_WORDS, PLURALS, Scene

EOC = TokenConfig.eoc_token
EOS = "<|endoftext|>"
PAD = "<PAD>"
UNK = "<unk>"

CAPTION_TEMPLATES = (
    "Here is {cap}.",
    "This picture shows {cap}.",
    "I drew {cap} today.",
    "Look at {cap}!",
    "My friend sent me {cap}.",
    "We found {cap} in the box.",
)
CAPTION_PAGE_INTROS = ("My drawings.", "Pictures from the weekend.", "A few sketches.", "New art.")
ACTIVITIES = (
    "naps in the sun",
    "likes to play",
    "is hungry again",
    "sits by the window",
    "was a gift from my aunt",
    "is on sale today",
    "came home with me",
    "loves the garden",
)
BURSTY_INTROS = ("Meet my pets.", "Our new products.", "The gang is back.", "Friends of the shop.")
OUTROS = ("Thanks for visiting.", "See you soon.", "More next week.")
# Words of the evaluation prompts (task files), so that the LM has seen them in text.
PROMPT_TEXT = (
    "Output: Question: Short answer: Answer: what colour shape how many is are the object objects there"
)
PROMPTS = PromptConfig(
    caption=PromptTemplate("{image}Output:{caption}{eoc}", "{image}Output:"),
    vqa=PromptTemplate(
        "{image}Question:{question} Short answer:{answer}{eoc}", "{image}Question:{question} Short answer:"
    ),
    classify=PromptTemplate("{image}{label}{eoc}", "{image}"),
    interleaved=PromptTemplate("{image}{text}{eoc}", "{image}{text}"),
)
"""The prompt templates the quickstart's model learns and is evaluated with, recorded in its checkpoints: the
world's pages put no newline between chunks, and a novel-label episode shows ``{image}{name}{eoc}`` per
demonstration and then the query's ``{image}`` (see ``flamingo.quickstart.episodes``)."""
QUESTION_KINDS = ("colour", "shape", "count")
QA_STYLES = ("marked", "plain")
NAME_QUESTION_WORDS = ("name",)
"""The word a pet quiz adds to the vocabulary (:func:`name_question`; ``of`` is a template word already); only
worlds with pet quizzes have it."""


def caption_sentence(scene: Scene, rng: random.Random) -> str:
    """A caption-page sentence about ``scene``."""
    cap = scene.caption()
    return rng.choice(CAPTION_TEMPLATES).format(cap=cap)


def question_answer(scene: Scene, kind: str) -> tuple[str, str]:
    """A VQA question about ``scene`` and its one-word answer; the question never contains the answer."""
    many = scene.count > 1
    if kind == "colour":
        noun = PLURALS[scene.shape] if many else scene.shape
        return f"what colour {'are' if many else 'is'} the {noun}?", scene.colour
    if kind == "shape":
        noun = "objects" if many else "object"
        return f"what shape {'are' if many else 'is'} the {scene.colour} {noun}?", scene.shape
    if kind == "count":
        return f"how many {scene.colour} {PLURALS[scene.shape]} are there?", COUNT_WORDS[scene.count - 1]
    raise ValueError(f"unknown question kind {kind!r}; use one of {QUESTION_KINDS}")


def qa_sentence(scene: Scene, kind: str, whole: bool = False, style: str = "marked") -> str:
    """A Q&A-page sentence; ``answer`` stays lower case so the sentence splitter keeps it in one sentence.

    ``whole``: the answer as a short sentence (``answer: the triangle is red.``) instead of one word.
    ``style``: ``marked`` (``Question: ... answer: ...``) or ``plain``, a question answered in a sentence with
    no markers (``What colour is the triangle? the triangle is red.``), so that neither the marker words of the
    VQA prompt nor its one-word answers occur in the world's text.
    """
    question, answer = question_answer(scene, kind)
    if style == "plain":
        # a capital, so that the builder's sentence splitter starts a new sentence there
        return f"{question[0].upper()}{question[1:]} {sentence_answer(scene, kind)}."
    if style != "marked":
        raise ValueError(f"unknown quiz style {style!r}; use one of {QA_STYLES}")
    if whole:
        answer = sentence_answer(scene, kind)
    return f"Question: {question} answer: {answer}."


def sentence_answer(scene: Scene, kind: str) -> str:
    """The answer of :func:`question_answer` as a short sentence, in words the vocabulary already has."""
    many = scene.count > 1
    if kind == "colour":
        noun = PLURALS[scene.shape] if many else scene.shape
        return f"the {noun} {'are' if many else 'is'} {scene.colour}"
    if kind == "shape":
        if many:
            return f"the {scene.colour} objects are {PLURALS[scene.shape]}"
        return f"the {scene.colour} object is a {scene.shape}"
    if kind == "count":
        return f"there are {COUNT_WORDS[scene.count - 1]}" if many else "there is one"
    raise ValueError(f"unknown question kind {kind!r}; use one of {QUESTION_KINDS}")


def name_question(scene: Scene) -> str:
    """``what is the name of the red triangle?``: a pet quiz asks for a single object's invented name.

    The question names the colour and the shape (the builder places the picture by them), so the answer is
    one of the names that went with that description earlier in the context, or a guess.
    """
    return f"what is the name of the {scene.colour} {scene.shape}?"


def name_sentence(name: str, scene: Scene) -> str:
    """A pet-quiz sentence: ``Question: what is the name of the red triangle? answer: zorp.``"""
    return f"Question: {name_question(scene)} answer: {name}."


def bursty_sentence(name: str, scene: Scene, rng: random.Random) -> str:
    """``Zorp, the red triangle, naps in the sun.``: the name first, then what it looks like."""
    return f"{name.capitalize()}, the {scene.colour} {scene.shape}, {rng.choice(ACTIVITIES)}."


def _all_template_text() -> str:
    parts = [*CAPTION_TEMPLATES, *CAPTION_PAGE_INTROS, *ACTIVITIES, *BURSTY_INTROS, *OUTROS, PROMPT_TEXT]
    return " ".join([*parts, "Question: answer: what colour shape how many are is the there objects object"])


TEMPLATE_WORDS = tuple(sorted({w.lower() for w in re.findall(r"[A-Za-z]+", _all_template_text())} - {"cap"}))
PUNCTUATION = (".", ",", "!", "?", ":")


# ------------------------------------------------------------------------------------------ tokenizer


def build_tokenizer(words: list[str], names: list[str]) -> Any:
    """A lower-casing word-level tokenizer over ``words`` + ``names`` (every name is one token).

    Specials: ``<|endoftext|>`` (bos/eos), ``<|endofchunk|>``, ``<PAD>`` and ``<unk>``; Flamingo adds ``<image>``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, EOC, PAD, UNK]
    vocab = {token: i for i, token in enumerate([*specials, *PUNCTUATION, *sorted(set(words) | set(names))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [EOC]})
    return tokenizer
