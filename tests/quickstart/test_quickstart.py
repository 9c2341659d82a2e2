"""The quickstart end to end (``--small``), and the pieces it relies on.

The end-to-end test runs every stage once (a few minutes on 2 cores) and checks that each produced valid
output and that in-context learning really uses the demonstration images: 4-shot novel-label accuracy must
beat 0-shot and text-only context by a wide margin, on every seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from flamingo.quickstart import world
from flamingo.quickstart.world_lm import SmearLMConfig, SmearLMForCausalLM

MARGIN = 0.2  # 4-shot minus 0-shot / text-only; observed margins are far larger (see the report)


def test_world_is_deterministic_and_holds_out_combinations() -> None:
    a = world.draw_scene(world.Scene("star", "red", 2), random.Random(3))
    b = world.draw_scene(world.Scene("star", "red", 2), random.Random(3))
    assert a.tobytes() == b.tobytes() and a.size == (32, 32)
    assert len(world.HELDOUT_COMBOS) == 8
    assert {s for s, _ in world.HELDOUT_COMBOS} == set(world.SHAPES)
    assert {c for _, c in world.HELDOUT_COMBOS} == set(world.COLOURS)
    assert not set(world.training_combos()) & world.HELDOUT_COMBOS
    train, heldout = world.invented_names()
    assert not set(train) & set(heldout) and all(3 <= len(n) <= 5 for n in train + heldout)


def test_page_shapes_follow_the_config_and_bad_ranges_are_refused(tmp_path: Path) -> None:
    from flamingo.quickstart import pages

    train, _ = world.invented_names()
    bursty = pages.make_pages(tmp_path, "bursty", 6, train, seed=0, pictures=(9, 10), objects=(2, 2))
    for page in bursty:
        assert 9 <= len(page.items) <= 10
        names = [sentence.split(",")[0].lower() for _, sentence in page.items]
        assert len(set(names)) == 2 and set(names) <= set(train)
    quiz = pages.make_pages(tmp_path, "qa", 6, train, seed=0, pictures=(7, 7))
    assert all(len(page.items) == 7 for page in quiz)
    default = pages.make_pages(tmp_path, "captions", 6, train, seed=0)
    assert all(4 <= len(page.items) <= 6 for page in default)
    with pytest.raises(ValueError, match="range"):
        pages.make_pages(tmp_path, "qa", 1, train, seed=0, pictures=(5, 3))
    with pytest.raises(ValueError, match="objects <= pictures"):
        pages.make_pages(tmp_path, "bursty", 1, train, seed=0, pictures=(2, 3), objects=(3, 4))
    with pytest.raises(ValueError, match="unknown page kind"):
        pages.make_pages(tmp_path, "blog", 1, train, seed=0)


def test_bursty_cast_intros_list_the_names_of_the_page(tmp_path: Path) -> None:
    from flamingo.quickstart import pages

    train, _ = world.invented_names()
    named = pages.make_pages(tmp_path, "bursty", 8, train, seed=0, objects=(3, 3), cast_intro=1.0)
    for page in named:
        cast = {sentence.split(",")[0].lower() for _, sentence in page.items}
        listed = page.intro.split(":")[1].strip(" .").lower().split(", ")
        assert set(listed) == cast and len(listed) == 3
    plain = pages.make_pages(tmp_path, "bursty", 8, train, seed=0)
    assert all(":" not in page.intro for page in plain)


def test_quiz_pages_ask_only_the_configured_question_kinds(tmp_path: Path) -> None:
    from flamingo.quickstart import pages

    train, _ = world.invented_names()
    quiz = pages.make_pages(tmp_path, "qa", 10, train, seed=0, qa_kinds=("colour", "shape"))
    sentences = [sentence for page in quiz for _, sentence in page.items]
    assert sentences and not any("how many" in s for s in sentences)
    assert any("what colour" in s for s in sentences) and any("what shape" in s for s in sentences)
    every = pages.make_pages(tmp_path, "qa", 10, train, seed=0)
    assert any("how many" in sentence for page in every for _, sentence in page.items)
    for bad in ((), ("size",)):
        with pytest.raises(ValueError, match="question kinds"):
            pages.make_pages(tmp_path, "qa", 1, train, seed=0, qa_kinds=bad)


def test_quiz_pages_answer_in_words_or_whole_sentences_one_style_per_page(tmp_path: Path) -> None:
    import re

    from flamingo.quickstart import pages, text

    train, heldout = world.invented_names()
    word = re.compile(r"^Question: .+\? answer: [a-z]+\.$")
    plain = pages.make_pages(tmp_path / "a", "qa", 12, train, seed=0)
    assert all(word.match(sentence) for page in plain for _, sentence in page.items)
    mixed = pages.make_pages(tmp_path / "b", "qa", 40, train, seed=0, qa_whole_answers=0.5)
    styles = {all(word.match(s) for _, s in page.items) for page in mixed}
    assert styles == {True, False}  # both styles, and never both on one page
    for page in mixed:
        assert len({bool(word.match(s)) for _, s in page.items}) == 1
    tokenizer = text.build_tokenizer(world.vocabulary_words(), train + heldout)
    rng = random.Random(0)
    for kind in text.QUESTION_KINDS:
        for _ in range(30):
            scene = world.random_scene(rng)
            _, answer = text.question_answer(scene, kind)
            whole = text.sentence_answer(scene, kind)
            assert answer in whole.split()[-1]  # the one-word answer ends the sentence (plural for shapes)
            ids = tokenizer(text.qa_sentence(scene, kind, whole=True)).input_ids
            assert tokenizer.unk_token_id not in ids  # every word is in the world's vocabulary


def test_plain_quiz_style_never_shows_the_vqa_prompt_convention(tmp_path: Path) -> None:
    """``qa_style: plain``: quiz pages, the LM's text and the CLIP's sentences ask the benchmark's questions
    but answer in sentences without the prompt's markers, and each question stays one sentence for the builder."""
    import re

    from flamingo.corpus.sentences import split_sentences
    from flamingo.quickstart import pages, text, world_clip, world_lm_train

    train, heldout = world.invented_names()
    plain = re.compile(r"^(What|How) [a-z ]+\? (the|there) [a-z ]+\.$")
    quiz = pages.make_pages(tmp_path, "qa", 12, train, seed=0, qa_style="plain")
    sentences = [sentence for page in quiz for _, sentence in page.items]
    assert sentences and all(plain.match(s) for s in sentences)
    assert split_sentences(" ".join(["Test your eyes.", *sentences])) == ["Test your eyes.", *sentences]
    tokenizer = text.build_tokenizer(world.vocabulary_words(), train + heldout)
    assert all(tokenizer.unk_token_id not in tokenizer(s).input_ids for s in sentences)
    docs = world_lm_train.page_texts(random.Random(0), train, 300, qa_style="plain")
    assert not any("answer" in doc.lower() or "Question" in doc for doc in docs)
    assert sum("? the " in doc or "? there " in doc for doc in docs) > 60  # the quiz text is still there
    marked = world_lm_train.page_texts(random.Random(0), train, 300)
    assert any("Short answer:" in doc for doc in marked)  # the default keeps the prompt's convention
    rng = random.Random(0)
    for _ in range(50):
        sentence, _ = world_clip.world_sentence(world.random_scene(rng), rng, train, qa_style="plain")
        assert "answer" not in sentence and "Question" not in sentence
    with pytest.raises(ValueError, match="quiz style"):
        pages.make_pages(tmp_path, "qa", 1, train, seed=0, qa_style="loud")
    from flamingo.quickstart.run import QuickstartConfig, run_quickstart

    with pytest.raises(ValueError, match="qa_style"):  # refused before any stage starts
        run_quickstart(QuickstartConfig(out=str(tmp_path / "run"), qa_style="loud"))
    assert not (tmp_path / "run").exists()


def test_pet_quizzes_ask_for_the_names_of_the_pictured_pets(tmp_path: Path) -> None:
    """``pet_quiz``: a share of bursty pages asks for each pet's name in the quiz format; the question names
    the pet's colour and shape (the builder places pictures by them) and a page keeps one name per pet."""
    import re

    from flamingo.quickstart import pages, text, world_clip, world_lm_train

    train, heldout = world.invented_names()
    question = re.compile(r"^Question: what is the name of the ([a-z]+) ([a-z]+)\? answer: ([a-z]+)\.$")
    made = pages.make_pages(tmp_path / "a", "bursty", 40, train, seed=0, cast_intro=0.5, pet_quiz=0.5)
    quizzes = [page for page in made if "/pet-quiz/" in page.url]
    assert 8 < len(quizzes) < 32 and len(quizzes) < len(made)  # both kinds of page
    for page in quizzes:
        named: dict[tuple[str, str], str] = {}
        for _, sentence in page.items:
            colour, shape, name = question.match(sentence).groups()
            assert colour in world.COLOURS and shape in world.SHAPES and name in train
            assert named.setdefault((colour, shape), name) == name  # one name per pet on a page
        if ":" in page.intro:  # a cast intro lists exactly the pets the page asks about
            assert set(page.intro.split(": ")[1].rstrip(".").lower().split(", ")) == set(named.values())
    default = pages.make_pages(tmp_path / "b", "bursty", 40, train, seed=0, cast_intro=0.5)
    assert not any("/pet-quiz/" in page.url for page in default)
    assert "name" in world.vocabulary_words(pet_quiz=True) and "name" not in world.vocabulary_words()
    tokenizer = text.build_tokenizer(world.vocabulary_words(pet_quiz=True), train + heldout)
    sentences = [s for page in quizzes for _, s in page.items]
    assert all(tokenizer.unk_token_id not in tokenizer(s).input_ids for s in sentences)
    docs = world_lm_train.page_texts(random.Random(0), train, 300, pet_quiz=True)
    prompt_format, page_format = (
        r"name of the \w+ \w+\? Short answer: \w+",
        r"name of the \w+ \w+\? answer: \w+\.",
    )
    assert any(re.search(prompt_format, d) for d in docs) and any(re.search(page_format, d) for d in docs)
    assert not any("name of" in d for d in world_lm_train.page_texts(random.Random(0), train, 300))
    rng = random.Random(0)
    said = [
        world_clip.world_sentence(world.random_scene(rng), rng, train, pet_quiz=True)[0] for _ in range(300)
    ]
    assert any(question.match(s) for s in said)
    with pytest.raises(ValueError, match="pet_quiz"):
        pages.make_pages(tmp_path / "c", "bursty", 1, train, seed=0, pet_quiz=1.5)


def test_world_vqa_name_questions_ask_about_a_fixed_cast_of_pets(tmp_path: Path) -> None:
    """``vqa_names``: a share of the VQA set asks for the held-out name of one of a few pets; the question
    describes the pet, only demonstrations about the same pet can give the name, and the metric scores the
    set's own answers as right."""
    import re

    from flamingo.eval.metrics import get_metric
    from flamingo.eval.tasks import load_task
    from flamingo.quickstart import pages
    from flamingo.quickstart.run import TASKS_DIR, QuickstartConfig, run_quickstart

    _, heldout = world.invented_names()
    cast = pages.vqa_cast(0, heldout, 2)
    assert cast == pages.vqa_cast(0, heldout, 2) and len({combo for _, combo in cast}) == 2
    assert all(name in heldout and combo in world.training_combos() for name, combo in cast)
    pages.write_vqa_set(tmp_path, train=200, test=60, seed=0, name_share=0.25, cast=cast)
    annotations = json.loads((tmp_path / "vqa" / "annotations_train.json").read_text())["annotations"]
    questions = json.loads((tmp_path / "vqa" / "questions_train.json").read_text())["questions"]
    names = [(q["question"], a["multiple_choice_answer"]) for q, a in zip(questions, annotations)
             if a["question_type"] == "name"]  # fmt: skip
    assert 30 < len(names) < 70  # about a quarter of 200
    by_class = {combo: name for name, combo in cast}
    for question, answer in names:
        colour, shape = re.match(r"^what is the name of the ([a-z]+) ([a-z]+)\?$", question).groups()
        assert by_class[(shape, colour)] == answer
    assert {a["question_type"] for a in annotations} == {"colour", "shape", "count", "name"}
    spec = load_task(TASKS_DIR / "world_vqa.yaml")
    test = spec.load_split("test", str(tmp_path))
    gold = [example.references[0] for example in test]
    assert set(gold) & {name for name, _ in cast}
    assert get_metric(spec.metric)(gold, [example.references for example in test]) == 100.0
    pages.write_vqa_set(tmp_path / "plain", train=200, test=0, seed=0)
    plain = json.loads((tmp_path / "plain" / "vqa" / "annotations_train.json").read_text())["annotations"]
    assert "name" not in {a["question_type"] for a in plain}
    with pytest.raises(ValueError, match="cast"):
        pages.write_vqa_set(tmp_path / "x", train=2, test=2, seed=0, name_share=0.5)
    with pytest.raises(ValueError, match="cast"):
        pages.vqa_cast(0, heldout, 0)
    with pytest.raises(ValueError, match="vqa_names"):  # refused before any stage starts
        run_quickstart(QuickstartConfig(out=str(tmp_path / "run"), vqa_names=1.5))
    assert not (tmp_path / "run").exists()


def test_vqa_scores_by_question_kind_show_the_wrong_outputs(tmp_path: Path) -> None:
    from flamingo.eval.results import write_predictions
    from flamingo.quickstart.report import vqa_by_kind

    annotations = tmp_path / "annotations.json"
    kinds = {1: "colour", 2: "count", 3: "count"}
    items = [{"question_id": i, "question_type": k} for i, k in kinds.items()]
    annotations.write_text(json.dumps({"annotations": items}))
    outputs = {  # (example, shots) -> output; the reference answers are "red", "three", "two"
        (1, 0): "red", (2, 0): "three", (3, 0): "two",
        (1, 4): "red", (2, 4): "three are the", (3, 4): "two",
        (1, 16): "Red.", (2, 16): "three are the", (3, 16): "2",
    }  # fmt: skip
    answers = {1: "red", 2: "three", 3: "two"}
    records = [
        {"example_id": str(i), "seed": 0, "shots": shots, "demo_ids": [], "raw_output": out,
         "processed_output": out, "references": [answers[i]] * 10}
        for (i, shots), out in outputs.items()
    ]  # fmt: skip
    predictions = tmp_path / "predictions.jsonl"
    write_predictions(predictions, records)
    result = vqa_by_kind(predictions, annotations)
    assert list(result["scores"]["count"]) == ["0", "4", "16"]  # shot counts in numeric order
    assert result["scores"]["colour"] == {"0": 100.0, "4": 100.0, "16": 100.0}  # normalised like the metric
    assert result["scores"]["count"] == {"0": 100.0, "4": 50.0, "16": 50.0}
    assert result["counts"]["count"] == {"0": 2, "4": 2, "16": 2}
    assert result["errors"]["count"] == [("three are the", "three", 2)]


def test_caption_outputs_show_what_the_captions_were(tmp_path: Path) -> None:
    from flamingo.eval.results import write_predictions
    from flamingo.quickstart.report import caption_outputs

    outputs = {  # (example, shots) -> output; example i's references are "a red circle" and "one red circle"
        (1, 0): "a red circle", (2, 0): "what colour is it?", (3, 0): "one red circle",
        (1, 4): "what colour is it?", (2, 4): "what colour is it?", (3, 4): "a red circle ",
        (1, 8): "a red circle by the", (2, 8): "a red circle", (3, 8): "a red circle",
    }  # fmt: skip
    records = [
        {"example_id": str(i), "seed": 0, "shots": shots, "demo_ids": [], "raw_output": out,
         "processed_output": out, "references": ["a red circle", "one red circle"]}
        for (i, shots), out in outputs.items()
    ]  # fmt: skip
    predictions = tmp_path / "predictions.jsonl"
    write_predictions(predictions, records)
    result = caption_outputs(predictions)
    assert list(result["exact"]) == ["0", "4", "8"]
    assert result["exact"] == pytest.approx({"0": 2 / 3, "4": 1 / 3, "8": 2 / 3})
    assert result["counts"] == {"0": 3, "4": 3, "8": 3}
    assert result["errors"]["4"] == [("what colour is it?", 2)]
    assert result["errors"]["8"] == [("a red circle by the", 1)]


def test_report_html_keeps_tables_lists_and_code_together() -> None:
    from flamingo.quickstart.report import markdown_html

    markdown = "\n".join([
        "# report", "", "| kind | 4 shots |", "|---|---|", "| colour | `red <b>` x2 |", "| count | 50.0 |", "",
        "- first", "- second", "text with `code`", "![shots](plots/shots.png)",
    ])  # fmt: skip
    page = markdown_html(markdown)
    assert page.startswith("<h1>report</h1><table><tr><th>kind</th><th>4 shots</th></tr>")
    assert page.count("<table>") == 1 and page.count("<tr>") == 3  # one table: the header and two rows
    assert "<td><code>red &lt;b&gt;</code> x2</td>" in page  # escaped, code spans kept
    assert "<ul><li>first</li><li>second</li></ul><p>text with <code>code</code></p>" in page
    assert "plots/shots.png" not in page  # the HTML embeds the plots itself


def test_config_overrides_from_a_file_are_checked(tmp_path: Path) -> None:
    from flamingo.quickstart.cli import _read_overrides
    from flamingo.quickstart.run import QuickstartConfig

    path = tmp_path / "qs.yaml"
    path.write_text(
        "train_steps: 7\npictures: {qa: [3, 4]}\nseeds: [5]\nbursty_cast_intro: 0.5\nqa_kinds: [colour]\n"
    )
    config = QuickstartConfig.small().updated(_read_overrides(str(path)))
    assert config.train_steps == 7 and config.seeds == (5,) and config.bursty_cast_intro == 0.5
    assert config.qa_kinds == ("colour",)
    assert config.pictures["qa"] == (3, 4) and config.pictures["bursty"] == (7, 8)  # other kinds kept
    assert config.pages == QuickstartConfig.small().pages
    with pytest.raises(ValueError, match="field 'train_step': unknown field; did you mean 'train_steps'"):
        config.updated({"train_step": 3})
    with pytest.raises(
        ValueError, match=r"qs\.yaml: field 'pictures\.qa\.1': got 10000; expected an integer"
    ):
        config.updated({"pictures": {"qa": [3, 10_000]}}, source=str(path))
    with pytest.raises(ValueError, match="unknown page kind"):
        config.updated({"pictures": {"blog": [1, 2]}})
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="mapping"):
        _read_overrides(str(path))


def test_smeared_lm_cached_generation_equals_uncached_and_padding_is_invisible() -> None:
    torch.manual_seed(0)
    model = SmearLMForCausalLM(SmearLMConfig(vocab_size=40, pad_token_id=0, eos_token_id=1)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.smear.fill_(0.8)  # make the smearing matter
    ids = torch.randint(2, 40, (2, 6))
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    greedy = ids
    for _ in range(4):
        greedy = torch.cat([greedy, model(greedy).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, greedy)
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], model(ids).logits)


def test_decoder_layers_found_through_the_fallback() -> None:
    from flamingo.model.lm import decoder_layers_path

    model = SmearLMForCausalLM(SmearLMConfig(vocab_size=20))
    assert decoder_layers_path(model) == "model.layers"


def test_copy_sequences_supervise_only_names_that_can_be_copied() -> None:
    from flamingo.quickstart import text
    from flamingo.quickstart.world_lm_train import IGNORE, CopyData

    train, heldout = world.invented_names(0, train=20, heldout=5)
    tokenizer = text.build_tokenizer(world.vocabulary_words(), train + heldout)
    data = CopyData(tokenizer, train, length=60, seed=0)
    for _ in range(5):
        ids, labels, repeat = data.copy_sequence(train + heldout)
        name_ids = set(tokenizer.convert_tokens_to_ids(train + heldout))
        names_at = [i for i, token in enumerate(ids) if token in name_ids]
        first = [i for i in names_at if not repeat[i]]
        assert first and all(labels[i] == IGNORE for i in first)  # a first mention is a guess: no loss
        assert all(labels[i] == ids[i] for i in names_at if repeat[i])
        assert sum(label != IGNORE for label in labels) == sum(repeat)


def test_lm_pretraining_data_is_a_function_of_the_seed() -> None:
    """The tokenizer's vocabulary comes from a hash map whose order changes from call to call; the copy data
    must not depend on it (it did, and two quickstart runs of the same seed pretrained different LMs)."""
    from flamingo.quickstart import text
    from flamingo.quickstart.world_lm_train import CopyData

    train, heldout = world.invented_names(0, train=40, heldout=10)
    batches = []
    for _ in range(4):
        tokenizer = text.build_tokenizer(world.vocabulary_words(), train + heldout)
        data = CopyData(tokenizer, train, length=48, seed=3)
        batches.append([data.batch(4, train + heldout) for _ in range(3)])
    for other in batches[1:]:
        for (ids, labels), (ids2, labels2) in zip(batches[0], other):
            assert torch.equal(ids, ids2) and torch.equal(labels, labels2)


def test_world_vqa_scores_its_own_answers_as_right(tmp_path: Path) -> None:
    """The world's answers spell numbers ("three"); the official VQA metric turns a predicted "three" into
    "3" but leaves identical annotator answers as they are, so every right count answer would score 0. The
    world task uses OpenFlamingo's variant, which normalises both sides: its own answers score 100."""
    from flamingo.eval.metrics import get_metric
    from flamingo.eval.tasks import load_task
    from flamingo.quickstart import pages
    from flamingo.quickstart.run import TASKS_DIR

    pages.write_vqa_set(tmp_path, train=4, test=60, seed=0)
    spec = load_task(TASKS_DIR / "world_vqa.yaml")
    test = spec.load_split("test", str(tmp_path))
    assert any(example.references[0] in world.COUNT_WORDS for example in test)
    gold = [example.references[0] for example in test]
    references = [example.references for example in test]
    assert get_metric(spec.metric)(gold, references) == 100.0
    assert get_metric("vqa_accuracy")(gold, references) < 100.0  # what the official metric would say


def test_background_stages_send_results_in_order_and_their_errors_reach_the_parent():
    from flamingo.quickstart.run import StageLog, _BackgroundStage

    if not _BackgroundStage.available():
        pytest.skip("needs fork")
    lines: list[str] = []
    log = StageLog(lines.append)

    def two():
        with log.stage("first", "one"):
            pass
        yield "a", [1, 2]
        yield "b", {"x": 3}

    stage = _BackgroundStage("both", two, 1, log)
    assert stage.result("b") == {"x": 3} and stage.result("a") == [1, 2]
    assert "first" in log.seconds  # the child's stage timings join the parent's
    with pytest.raises(RuntimeError, match="finished without sending 'c'"):
        stage.result("c")
    stage.close()
    assert not stage.process.is_alive()

    def fails():
        yield "a", 1
        raise KeyError("no such stage input")

    stage = _BackgroundStage("failing", fails, 1, log)
    assert stage.result("a") == 1
    with pytest.raises(KeyError, match="no such stage input") as raised:
        stage.result("b")
    assert "in the failing process" in "".join(raised.value.__notes__)  # with the child's traceback
    stage.close(kill=True)
    assert not stage.process.is_alive()

    def sleeps():
        import time

        time.sleep(60)
        yield "a", 1

    stage = _BackgroundStage("sleeping", sleeps, 1, log)
    stage.close(kill=True)  # the parent failed: the child stops at once, not after its stage
    assert not stage.process.is_alive()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from flamingo.quickstart.run import QuickstartConfig, run_quickstart

    out = tmp_path_factory.mktemp("quickstart")
    config = QuickstartConfig.small(out=str(out), seeds=(0, 1, 2))
    config.threads = 2  # the LM in a second process beside the CLIP, training with data worker processes
    return out, run_quickstart(config)


def test_small_quickstart_every_stage_produced_valid_output(small_run: tuple[Path, dict]) -> None:
    from flamingo import Flamingo
    from flamingo.corpus.read import ReadConfig, read_warc
    from flamingo.data import validate_shards

    out, summary = small_run
    assert len(list((out / "world" / "warc").glob("*.warc.gz"))) == 3
    assert summary["clip"]["metrics"]["page_retrieval_top1"] > 0.8
    assert summary["lm"]["copy_accuracy"][-1][1] >= 0.9 and summary["lm"]["beside_clip"]
    assert summary["timings"]["lm"] > 0 and "second process" in (out / "report.md").read_text()
    report = validate_shards(str(out / "build" / "shards"))
    assert report.ok and report.documents > 100 and report.images > 500
    pairs = validate_shards(str(out / "build" / "pairs" / "shards"))
    assert pairs.ok and pairs.pairs == 300
    metrics = summary["train"]["metrics"]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    model = Flamingo.from_pretrained(str(out / "model"))  # backbones included
    assert model.config.backbones_included and model.config.cross_attn.gate_init == 0.5
    for task in ("world_captions", "world_vqa"):
        results = json.loads((out / "eval" / "results" / task / "results.json").read_text())
        assert set(results["scores"]) == {"0", "4", "8"}
        # 0 shots without any demonstration: no demonstration ids, text or pictures, and one seed
        bare = json.loads((out / "eval" / "results_no_demos" / task / "results.json").read_text())
        assert set(bare["scores"]) == {"0"} and bare["task_settings"]["zero_shot_text_demos"] == 0
        rows = (out / "eval" / "results_no_demos" / task / "predictions.jsonl").read_text().splitlines()
        assert len(rows) == 24 and all(json.loads(row)["demo_ids"] == [] for row in rows)
    by_kind = summary["eval"]["vqa_by_kind"]
    assert set(by_kind["scores"]) == {"colour", "shape", "count", "name"}  # small() asks name questions
    read = ReadConfig()
    urls = [doc.url for path in (out / "world" / "warc").glob("*.warc.gz") for doc in read_warc(path, read)]
    assert [pet["name"] for pet in summary["world"]["vqa_cast"]] and any("/pet-quiz/" in u for u in urls)
    assert "`name` questions ask for the names of" in (out / "report.md").read_text()
    assert set(summary["eval"]["vqa_by_kind_no_demos"]["scores"]["colour"]) == {"0"}
    assert (
        sum(n for counts in by_kind["counts"].values() for n in counts.values()) == 3 * 3 * 24
    )  # shots x seeds
    assert (out / "report.md").stat().st_size > 0 and (out / "report.html").stat().st_size > 0
    assert "| 0 shots, no demonstrations |" in (out / "report.md").read_text()
    captions = summary["eval"]["caption_outputs"]
    assert set(captions["exact"]) == {"0", "4", "8"} and set(captions["counts"].values()) == {3 * 24}
    assert summary["eval"]["caption_outputs_no_demos"]["counts"] == {"0": 24}
    assert "Captions equal to a reference caption" in (out / "report.md").read_text()
    assert (out / "plots" / "losses.png").is_file() and (out / "plots" / "shots.png").is_file()


def test_small_quickstart_learns_novel_labels_from_the_images(small_run: tuple[Path, dict]) -> None:
    _, summary = small_run
    for seed, result in summary["eval"]["episodes"].items():
        four = result["4-shot"]["open_accuracy"]
        assert four > result["0-shot"]["open_accuracy"] + MARGIN, f"seed {seed}: {four} vs 0-shot"
        assert four > result["4-shot text-only"]["open_accuracy"] + MARGIN, (
            f"seed {seed}: {four} vs text-only"
        )
        assert four > result["4-shot blanked"]["open_accuracy"] + MARGIN, f"seed {seed}: {four} vs blanked"


def _world_digests(config, folder: Path) -> dict[str, str]:
    """Digests of what a quickstart configuration trains and evaluates on: its settings, the LM's text, 30 pages
    of each kind, the CLIP's sentences and the VQA set."""
    import dataclasses
    import hashlib

    from flamingo.quickstart import pages, world_clip, world_lm_train

    train, heldout = world.invented_names(config.seed, train=config.train_names)

    def digest(texts) -> str:
        h = hashlib.sha256()
        for t in texts:
            h.update(t.encode() + b"\0")
        return h.hexdigest()[:16]

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "out"}
    got = {"config": digest([json.dumps(settings, sort_keys=True)])}
    got["lm"] = digest(
        world_lm_train.page_texts(
            random.Random(config.seed), train, 3000, config.qa_style, config.lm_pet_quiz
        )
    )
    for kind in pages.PAGE_KINDS:
        made = pages.make_pages(
            folder, kind, 30, train, seed=config.seed, pictures=config.pictures[kind], objects=config.bursty_objects,
            cast_intro=config.bursty_cast_intro, qa_kinds=config.qa_kinds, qa_whole_answers=config.qa_whole_answers,
            qa_style=config.qa_style, pet_quiz=config.pet_quiz,
        )  # fmt: skip
        got[kind] = digest(t for page in made for t in (page.intro, *(s for _, s in page.items)))
    rng = random.Random(config.seed)
    got["clip"] = digest(
        world_clip.world_sentence(
            world.random_scene(rng), rng, train, config.qa_style, bool(config.pet_quiz)
        )[0]
        for _ in range(500)
    )
    cast = pages.vqa_cast(config.seed, heldout, config.vqa_cast)
    paths = pages.write_vqa_set(folder / "eval", 40, 40, config.seed, name_share=config.vqa_names, cast=cast)
    got["vqa"] = digest(path.read_text() for path in paths.values())
    return got


def test_the_default_world_text_is_pinned(tmp_path: Path) -> None:
    """The quickstart numbers in docs/quickstart.md are measurements of the default configuration: if its settings, its
    pages, the LM's text, the CLIP's sentences or the VQA set change, those numbers must be measured again (then
    update the digests here)."""
    from flamingo.quickstart.run import QuickstartConfig

    assert _world_digests(QuickstartConfig(), tmp_path) == {
        "config": "b9bc103ba87e67bb",
        "lm": "08b9d63f7d3942bf",
        "captions": "9899e326c39ad2f3",
        "qa": "8a8ceff8c72d9614",
        "bursty": "6688b826f3172316",
        "clip": "df236dff9898330a",
        "vqa": "ad7bce80eee7dd42",
    }, "the default world's text changed; measure the numbers in docs/quickstart.md again"


def test_the_name_questions_config_is_pinned(tmp_path: Path) -> None:
    """``configs/quickstart/name-questions.yaml``, whose runs docs/quickstart.md describes: its settings and
    world are pinned like the default's."""
    from flamingo.quickstart.cli import _read_overrides
    from flamingo.quickstart.run import QuickstartConfig

    path = Path(__file__).parents[2] / "configs" / "quickstart" / "name-questions.yaml"
    config = QuickstartConfig().updated(_read_overrides(str(path)))
    assert config.vqa_names == 0.25 and config.pet_quiz == 0.1 and config.pictures["captions"] == (4, 10)
    assert _world_digests(config, tmp_path) == {
        "config": "ec60f1c1ac4cb069",
        "lm": "08b9d63f7d3942bf",
        "captions": "73c6f4e4d4897463",
        "qa": "8a8ceff8c72d9614",
        "bursty": "2dab5430cf3a40d0",
        "clip": "8a919ccc03bb8d80",
        "vqa": "e52b3260080ddecc",
    }, "the config's world changed; measure what docs/quickstart.md says of it again"


def _episodes(four: float, zero: float, blanked: float, text_only: float, seeds: int = 2) -> dict:
    conditions = {"4-shot": four, "0-shot": zero, "4-shot blanked": blanked, "4-shot text-only": text_only}
    return {s: {c: {"open_accuracy": v} for c, v in conditions.items()} for s in range(seeds)}


def test_report_conclusion_follows_the_numbers() -> None:
    from flamingo.quickstart.report import conclusion

    won = conclusion(_episodes(0.9, 0.01, 0.2, 0.3))
    assert won.startswith("The model learned in context")
    assert "0.900 (mean of 2 seeds)" in won
    assert "0.010 with no demonstrations, 0.200 with blanked, 0.300 with text-only" in won
    lost = conclusion(_episodes(0.25, 0.01, 0.3, 0.1))  # blanked demonstrations do as well: no learning
    assert lost.startswith("The model did not learn in context") and "no better than with blanked (" in lost
    tie = conclusion(_episodes(0.3, 0.3, 0.0, 0.0, seeds=1))
    assert "did not learn" in tie and "with no demonstrations" in tie and "mean of 1 seed)" in tie
    assert "no 4-shot" in conclusion({0: {}}).lower()


def test_report_opens_with_its_conclusion_and_the_shots_plot(tmp_path: Path) -> None:
    from flamingo.quickstart.report import _markdown, markdown_html

    summary = {
        "eval": {"episodes": _episodes(0.9, 0.01, 0.2, 0.3), "generic": {}},
        "clip": {"metrics": {}},
        "lm": {"copy_accuracy": [], "steps": 1},
        "build": {"validation": {"ok": True, "documents": 1, "images": 1}},
        "timings": {},
        "paths": {},
    }
    plots = {"losses": tmp_path / "losses.png", "shots": tmp_path / "shots.png"}
    lines = _markdown(summary, plots).splitlines()
    assert lines[2].startswith("The model learned in context") and lines[4] == "![shots](plots/shots.png)"
    meanings = [line for line in lines if line.startswith("- **")]
    assert [m.split("**")[1] for m in meanings] == ["open accuracy", "blanked", "text-only", "held-out"]
    page = markdown_html("\n".join(lines), {"plots/shots.png": "data:image/png;base64,AAAA"})
    assert (
        page.index("learned in context") < page.index('src="data:image/png;base64,AAAA"') < page.index("<ul>")
    )
    assert "plots/losses.png" not in page and "<b>open accuracy</b>" in page


def test_training_progress_lines_say_step_loss_and_time_left() -> None:
    from flamingo.quickstart.stages import TrainProgress

    lines: list[str] = []
    progress = TrainProgress(100, lines.append, lines=4)
    for step in range(5, 101, 5):  # the trainer logs every 5 steps
        progress({"step": step, "loss": 10.0 / step})
    assert [line.split(":")[0].strip() for line in lines] == [
        f"train step {s}/100" for s in (25, 50, 75, 100)
    ]
    assert "loss 0.400," in lines[0] and "left" in lines[0] and lines[-1].endswith("about 0s left")


def test_quickstart_clip_is_created_without_the_random_weights_warning(caplog) -> None:
    import logging

    from flamingo.quickstart.world_clip import CLIP_NAME, create_clip

    with caplog.at_level(logging.WARNING):
        create_clip(0)
        logging.warning("No pretrained weights loaded for model 'other'. Model initialized randomly.")
    messages = [r.getMessage() for r in caplog.records]
    assert not any(CLIP_NAME in m for m in messages)  # dropped, for this model and this call only
    assert any("'other'" in m for m in messages)
