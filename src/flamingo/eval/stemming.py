"""OK-VQA answer stemming: map a predicted answer to the stemmed form of OK-VQA v1.1's ``answers``.

OK-VQA v1.1 stores its reference answers stemmed, so predictions must be stemmed the same way.
OpenFlamingo does it with NLTK (``word_tokenize``, ``pos_tag``, the WordNet lemmatizer for words ending
in "ing") and ``inflection.singularize`` for plural nouns, plus a table of manual matches. NLTK's models
and WordNet are data files that are downloaded separately, which this project never does at run time.

Two backends, chosen by ``backend``:

- ``"nltk"``: OpenFlamingo's procedure exactly; needs the NLTK data (punkt_tab,
  averaged_perceptron_tagger_eng, wordnet) already installed and the ``inflection`` package.
- ``"rules"``: a data-free approximation written here: a regex tokenizer, the same manual matches,
  singularisation by suffix rules for every word (there is no tagger to say which words are plural
  nouns) and rule-based "-ing" stripping. It agrees with the NLTK procedure on common answers
  ("dogs" -> "dog", "skiing" -> "ski", "running" -> "run", "making" -> "make") but not on every word.
- ``"auto"`` (default): ``"nltk"`` when everything it needs is installed, else ``"rules"``.
"""

from __future__ import annotations

import functools
import re
import warnings

# OpenFlamingo's manual matches (words its automatic rules get wrong for OK-VQA).
OKVQA_MANUAL_MATCHES = {
    "police": "police", "las": "las", "vegas": "vegas", "yes": "yes", "jeans": "jean",
    "controllers": "control", "weddings": "wed", "sometimes": "sometime", "earing": "ear",
}  # fmt: skip

_IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "mice": "mouse",
    "geese": "goose", "teeth": "tooth", "feet": "foot", "oxen": "ox", "dice": "die", "moves": "move",
    "sexes": "sex", "zombies": "zombie", "leaves": "leaf", "knives": "knife", "wives": "wife",
    "lives": "life", "wolves": "wolf", "shelves": "shelf", "halves": "half", "loaves": "loaf",
    "calves": "calf", "thieves": "thief", "cookies": "cookie", "movies": "movie", "ties": "tie",
    "pies": "pie", "lies": "lie", "buses": "bus", "glasses": "glass", "boxes": "box", "shoes": "shoe",
    "toes": "toe", "canoes": "canoe",
}  # fmt: skip
_UNCOUNTABLE = frozenset(
    [
        "equipment",
        "information",
        "rice",
        "money",
        "species",
        "series",
        "fish",
        "sheep",
        "jeans",
        "police",
        "news",
        "this",
        "his",
        "its",
        "is",
        "was",
        "has",
        "does",
        "yes",
        "us",
        "bus",
        "gas",
        "glass",
        "grass",
        "class",
        "dress",
        "boss",
        "chess",
        "cross",
        "kiss",
        "moss",
        "less",
        "plus",
        "lens",
        "tennis",
        "christmas",
        "texas",
        "paris",
        "always",
        "sometimes",
        "perhaps",
        "across",
        "various",
        "famous",
        "delicious",
    ]
)
# (suffix, replacement) tried in order on words that look plural.
_SINGULAR_RULES = (
    ("ies", "y"),
    ("sses", "ss"),
    ("shes", "sh"),
    ("ches", "ch"),
    ("xes", "x"),
    ("zzes", "zz"),
    ("oes", "o"),
    ("uses", "us"),
    ("ss", "ss"),
    ("us", "us"),
    ("s", ""),
)
_VOWELS = frozenset("aeiou")
_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def singularize(word: str) -> str:
    """Singular form of an English word by rules (irregulars, then suffixes); other words unchanged."""
    lower = word.lower()
    if lower in _UNCOUNTABLE or len(lower) <= 3:
        return word
    if lower in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[lower]
    for suffix, replacement in _SINGULAR_RULES:
        if lower.endswith(suffix):
            return word[: len(word) - len(suffix)] + replacement
    return word


def _is_cvc(stem: str) -> bool:
    """Consonant-vowel-consonant ending (not w/x/y): the shape of a verb that dropped an 'e' ("mak")."""
    if len(stem) < 3:
        return False
    c1, v, c2 = stem[-3], stem[-2], stem[-1]
    return c1 not in _VOWELS and v in _VOWELS and c2 not in _VOWELS and c2 not in "wxy"


def strip_ing(word: str) -> str:
    """Verb lemma of an "-ing" form by rules: "running"->"run", "making"->"make", "skiing"->"ski"."""
    stem = word[:-3]
    if len(stem) < 3 or not any(ch in _VOWELS or ch == "y" for ch in stem):
        return word  # "king", "ring", "string": no verb inside
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in _VOWELS | {"l", "s", "z"}:
        return stem[:-1]  # doubled final consonant: "running" -> "run"
    if _is_cvc(stem) and len(stem) <= 4:
        return stem + "e"  # dropped final e: "making" -> "make", "riding" -> "ride"
    return stem


def _stem_rules(text: str) -> str:
    words = []
    for token in _TOKEN.findall(text):
        if token in OKVQA_MANUAL_MATCHES:
            token = OKVQA_MANUAL_MATCHES[token]
        elif token.endswith("ing"):
            token = strip_ing(token)
        else:
            token = singularize(token)
        words.append(token)
    return " ".join(words)


@functools.cache
def _nltk_stemmer_or_reason() -> tuple[object | None, str]:
    """OpenFlamingo's NLTK-based stemmer as a callable, or (None, why it is unavailable)."""
    try:
        import inflection
        import nltk
        from nltk.corpus.reader import VERB
    except ImportError as err:
        return None, f"missing package ({err.name}); `pip install nltk inflection`"
    needed = ("tokenizers/punkt_tab", "taggers/averaged_perceptron_tagger_eng", "corpora/wordnet")
    for resource in needed:
        try:
            nltk.data.find(resource)
        except LookupError:
            return None, (
                f"NLTK data {resource!r} is not installed; install it where you have network access with "
                "`python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet`"
            )
    lemmatizer = nltk.stem.WordNetLemmatizer()

    def stem(text: str) -> str:
        out = []
        for word, tag in nltk.pos_tag(nltk.tokenize.word_tokenize(text)):
            if word in OKVQA_MANUAL_MATCHES:
                word = OKVQA_MANUAL_MATCHES[word]
            elif word.endswith("ing"):
                word = lemmatizer.lemmatize(word, VERB)
            elif tag.startswith("NNS") or tag.startswith("NNPS"):
                word = inflection.singularize(word)
            out.append(word)
        return " ".join(out)

    return stem, ""


def okvqa_stem(text: str, backend: str = "auto") -> str:
    """Stem a predicted OK-VQA answer like OK-VQA v1.1 stems its references (see the module docstring)."""
    if backend not in ("auto", "nltk", "rules"):
        raise ValueError(f"okvqa_stem: unknown backend {backend!r}; choose 'auto', 'nltk' or 'rules'.")
    if backend in ("auto", "nltk"):
        stemmer, reason = _nltk_stemmer_or_reason()
        if stemmer is not None:
            return stemmer(text)  # type: ignore[operator]
        if backend == "nltk":
            raise RuntimeError(f"okvqa_stem(backend='nltk') is unavailable: {reason}.")
        _warn_fallback(reason)
    return _stem_rules(text)


def stemmer_info(backend: str = "auto") -> dict[str, object]:
    """Which stemmer ``okvqa_stem(text, backend)`` uses in this process, for results files.

    ``{"backend": "nltk" | "rules", "exact": bool, "reason": why the exact one is unavailable or None,
    "versions": {package: version}}``; ``exact`` is True only for OpenFlamingo's NLTK procedure.
    """
    from importlib import metadata

    if backend == "rules":
        return {"backend": "rules", "exact": False, "reason": "backend='rules' was asked for", "versions": {}}
    stemmer, reason = _nltk_stemmer_or_reason()
    if stemmer is None:
        return {"backend": "rules", "exact": False, "reason": reason, "versions": {}}
    versions = {name: metadata.version(name) for name in ("nltk", "inflection")}
    return {"backend": "nltk", "exact": True, "reason": None, "versions": versions}


@functools.cache
def _warn_fallback(reason: str) -> None:
    """Say once per process that OK-VQA scores use the approximate stemmer."""
    warnings.warn(
        f"OK-VQA stemming uses the data-free rules, an approximation of OpenFlamingo's NLTK stemming "
        f"({reason}); scores can differ slightly from published ones.",
        stacklevel=3,
    )
