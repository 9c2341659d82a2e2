"""``run_quickstart``: world -> pages (WARC) -> tiny CLIP -> small LM -> builder -> trainer -> evaluation -> report.

Every stage prints what it does and how long it took; everything lands under one output folder::

    <out>/world/        names, WARC files (warc/), the alt-text pair list (pairs/) and their pictures (images/)
    <out>/backbones/    clip/ (open_clip weights), lm/ (the smeared-key LM and its tokenizer)
    <out>/build/        the builder's output: shards/, stats.json, report.md; pairs/ (the converted pair shards)
    <out>/train/        the trainer's run directory: metrics.jsonl, checkpoints/
    <out>/model/        the final checkpoint (backbones included): flamingo generate / serve open it
    <out>/eval/         evaluation data (Karpathy / VQA JSON), results of the generic evaluator, episodes.json
    <out>/report.md, report.html, plots/
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from flamingo.configs import MAX_SEED, ConfigError, between, from_mapping
from flamingo.errors import UsageError

TASKS_DIR = Path(__file__).parent / "tasks"
MAX_STEPS = 10_000_000
"""Largest number of steps of any stage."""
MAX_COUNT = 10_000_000
"""Largest number of pages, pairs, names, episodes or samples."""
QUICKSTART_MODEL_NAME = "flamingo-quickstart"
"""The name the quickstart's model card gives its model (``flamingo serve`` shows it)."""


@dataclass
class QuickstartConfig:
    """Sizes of every stage; :meth:`small` is the CI configuration."""

    out: str = "runs/quickstart"
    """Output folder."""
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=between(0, MAX_SEED))
    """Evaluation seeds (demonstrations and episodes)."""
    pages: dict[str, int] = field(
        default_factory=lambda: {"captions": 400, "qa": 800, "bursty": 2400}, metadata=between(0, MAX_COUNT)
    )
    """Web pages per kind (3600 pages: 1500 steps of 16 documents see each about 6.7 times; with 1000 pages the
    adapters memorised which training name went with which picture and predicted those names in context). With
    400 quiz pages instead of 800 (same backbones), 4-shot novel labels were 0.933/0.890/0.920 instead of
    0.963/0.947/0.963 and 4-shot VQA 90.3 instead of 100: the pictures of the demonstrations led count answers on
    into bursty-page phrases (``two gift from``)."""
    pictures: dict[str, tuple[int, int]] = field(
        default_factory=lambda: dict(_default_pictures()), metadata=between(1, 100)
    )
    """Pictures per page of each kind (a range). On a bursty page the first picture of each object is a first
    mention, whose name can only be guessed; the rest are repeats, whose name the adapters learn to copy. Quiz
    pages go to 10 so that an 8-shot VQA prompt (9 pictures) is not where pages end (with 4-6, 8-shot VQA was 66
    against 87 with 4-10, same backbones, 1 thread: the model went on after the answer the way pages end)."""
    bursty_objects: tuple[int, int] = field(default=(2, 3), metadata=between(1, 100))
    """Objects per bursty page (a range; each is a distinct training class under its own invented name)."""
    bursty_cast_intro: float = field(default=0.5, metadata=between(0, 1))
    """Share of bursty pages whose intro lists the cast's names (``Meet my pets: Zorp, Blix.``). A first mention
    on such a page is one of the names above it, so the adapters learn to pick a name from the context where
    they cannot copy one, instead of a training name (1 thread, same backbones: 4-shot novel labels 0.872 with
    none, 0.946 with half, 0.947 with all, but then blanked demonstrations 0.15, as the model names one of them
    anyway). Runs are sensitive to this share: a quarter gave 0.708 on the default world at 2 threads, and on
    world seed 1 at 1 thread 0.859 with none and 0.942 with a quarter (blanked 0.014 and 0.076)."""
    qa_kinds: tuple[str, ...] = ("colour", "shape", "count")
    """Question kinds the quiz pages ask (the VQA benchmark asks all three)."""
    qa_whole_answers: float = field(default=0.0, metadata=between(0, 1))
    """Share of quiz pages that answer in sentences (``answer: the triangle is red.``); the rest answer in one
    word, like the VQA benchmark's annotations."""
    qa_style: Literal["marked", "plain"] = "marked"
    """How quiz pages (and the LM's and the CLIP's quiz text) write questions and answers: ``marked``
    (``Question: what colour is the triangle? answer: red.``) or ``plain`` (``What colour is the triangle? the
    triangle is red.``), in which case no text of the world shows the VQA prompt's markers and one-word answers."""
    pet_quiz: float = field(default=0.0, metadata=between(0, 1))
    """Share of bursty pages written as pet quizzes (``Question: what is the name of the red triangle? answer:
    zorp.``); the CLIP's sentences then include such questions too (for the builder's placement)."""
    vqa_names: float = field(default=0.0, metadata=between(0, 1))
    """Share of the VQA set's questions that ask for the name of one of ``vqa_cast`` pets, whose held-out names
    only the demonstrations can give (OK-VQA-like: the picture alone cannot answer)."""
    vqa_cast: int = field(default=2, metadata=between(0, 1000))
    """Pets of the VQA set's name questions (distinct training classes with held-out names)."""
    lm_pet_quiz: bool = False
    """Pet-quiz documents in the LM's text, in the pages' format and the VQA prompt's (measured: they broke
    captions, see the notes)."""
    train_names: int = field(default=400, metadata=between(1, 100_000))
    """Invented names that training pages use (100 more are held out for the novel-label episodes)."""
    pairs: int = field(default=2000, metadata=between(0, MAX_COUNT))
    """Alt-text pairs (picture + bare description), trained on beside the pages like LAION in OpenFlamingo."""
    pair_batch_size: int = field(default=32, metadata=between(1, 65536))
    """Pairs per training step."""
    pair_loss_weight: float = field(default=0.2, metadata=between(0, 1000))
    """Weight of the pairs' loss (OpenFlamingo: 0.2 with twice the batch)."""
    pair_pack_tokens: int | None = field(default=None, metadata=between(2, 1 << 20))
    """Pack consecutive pairs into rows of this many tokens (None: one pair per row)."""
    clip_steps: int = field(default=1200, metadata=between(1, MAX_STEPS))
    """CLIP steps (batch 128): contrastive loss plus shape/colour/count heads."""
    clip_attribute_weight: float = field(default=1.0, metadata=between(0, 1000))
    """Weight of the CLIP's attribute heads (0: contrastive only)."""
    lm_max_steps: int = field(default=1500, metadata=between(1, MAX_STEPS))
    """Most LM pretraining steps; stops earlier once copy accuracy reaches ``lm_copy_threshold``."""
    lm_copy_threshold: float = field(default=0.995, metadata=between(0, 1))
    """Held-out copy accuracy at which LM pretraining stops (0.98 stopped at 800 steps; 4-shot novel labels
    0.850, against 0.882 with 0.995 and 1500 adapter steps, same world, 2 threads)."""
    similarity_threshold: float = field(default=0.2, metadata=between(-1, 1))
    """Builder and loader: image-sentence pairs with a lower CLIP cosine similarity are dropped."""
    train_steps: int = field(default=1500, metadata=between(1, MAX_STEPS))
    """Flamingo training steps."""
    batch_size: int = field(default=16, metadata=between(1, 65536))
    """Documents per training step."""
    gate_init: float = field(default=0.5, metadata=between(-10, 10))
    """Initial value of the cross-attention tanh gates."""
    episodes: int = field(default=300, metadata=between(0, MAX_COUNT))
    """Novel-label episodes per condition and seed."""
    eval_samples: int = field(default=100, metadata=between(1, MAX_COUNT))
    """Test examples per generic task (captions, VQA)."""
    threads: int = field(default=2, metadata=between(1, 1024))
    """Cores the quickstart may use (1 when other work shares the CPU). With 2 or more, a second process draws
    the world and pretrains the LM beside the CLIP stage (each side with half the threads), and
    training computes on ``threads - 1`` threads while its data worker processes take the remaining core."""
    seed: int = field(default=0, metadata=between(0, MAX_SEED))
    """Seed of the world and of training."""

    def __post_init__(self) -> None:
        from flamingo.quickstart.pages import PAGE_KINDS

        for name in ("pages", "pictures"):
            bad = sorted(map(str, set(getattr(self, name)) - set(PAGE_KINDS)))
            if bad:
                raise ConfigError(f"{name}: unknown page kind(s) {bad}; use {sorted(PAGE_KINDS)}")
        ranges = {f"pictures.{kind}": span for kind, span in self.pictures.items()}
        for name, (low, high) in {**ranges, "bursty_objects": self.bursty_objects}.items():
            if low > high:
                raise ConfigError(f"{name}: ({low}, {high}) is not a range (low, high) with low <= high")

    def updated(self, overrides: Mapping[str, Any], source: str = "quickstart overrides") -> QuickstartConfig:
        """A copy with ``overrides`` (field name -> value) applied, checked like a config file (errors name
        ``source``); ``pictures`` and ``pages`` change only the page kinds they name."""
        values: dict[str, Any] = asdict(self)
        for key, value in overrides.items():
            if key in ("pictures", "pages") and isinstance(value, Mapping):
                value = {**values[key], **value}
            values[key] = value
        return from_mapping(QuickstartConfig, values, source)

    @classmethod
    def small(cls, out: str = "runs/quickstart-small", seeds: tuple[int, ...] = (0, 1)) -> QuickstartConfig:
        """A few-minute configuration for CI: fewer pages, steps, episodes and samples."""
        return cls(
            out=out,
            seeds=seeds,
            pages={"captions": 40, "qa": 40, "bursty": 240},
            pairs=300,
            clip_steps=500,
            lm_max_steps=1200,
            lm_copy_threshold=0.9,
            train_steps=400,
            batch_size=16,
            episodes=100,
            eval_samples=24,
            pet_quiz=0.1,  # the name-question path (configs/quickstart/name-questions.yaml) runs in CI too
            vqa_names=0.25,
        )


def _default_pictures() -> dict[str, tuple[int, int]]:
    from flamingo.quickstart.pages import DEFAULT_PICTURES

    return DEFAULT_PICTURES


@dataclass
class StageLog:
    """Wall time of each stage, and printing with timestamps relative to the start."""

    printer: Callable[[str], None] = print
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(self, message: str) -> None:
        self.printer(f"[{time.perf_counter() - self.started:6.1f}s] {message}")

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self(f"{name}: {what}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self(f"{name}: done in {self.seconds[name]:.1f}s")


def run_quickstart(config: QuickstartConfig, printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage; returns the summary that the report is made of (also written to summary.json)."""
    import torch

    from flamingo.quickstart import report, stages, text, world_lm

    world_lm.register()  # the pipeline loads its LM folders by path, whatever their config.json names
    if config.threads < 1:
        raise UsageError(f"threads must be at least 1, got {config.threads}")
    if config.qa_style not in text.QA_STYLES:  # before any stage starts, not in the middle of one
        raise UsageError(f"qa_style must be one of {text.QA_STYLES}, got {config.qa_style!r}")
    for share in ("pet_quiz", "vqa_names"):
        if not 0.0 <= getattr(config, share) <= 1.0:
            raise UsageError(f"{share} is a share, between 0 and 1; got {getattr(config, share)}")
    if config.vqa_names and config.vqa_cast < 1:
        raise UsageError(f"vqa_cast must be at least 1 when vqa_names > 0, got {config.vqa_cast}")
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log = StageLog(printer)
    summary: dict[str, Any] = {"config": asdict(config), "paths": {}}
    names = _names(config, out)
    # With two cores or more, a second process draws the world and then pretrains the LM (which needs only the
    # names and the tokenizer) beside the CLIP here, each on half the threads: these stages use small matrices
    # that gain little from a second thread.
    background = None
    if config.threads >= 2 and _BackgroundStage.available():

        def world_then_lm() -> Iterator[tuple[str, Any]]:
            yield "world", _world_stage(config, out, log, names)
            yield "lm", _lm_stage(config, out, log, names)

        background = _BackgroundStage("world+lm", world_then_lm, config.threads // 2, log)
    try:
        if background:
            torch.set_num_threads(max(1, config.threads - config.threads // 2))
        else:
            world_info = _world_stage(config, out, log, names)
        clip_result = _clip_stage(config, out, log, names["train_names"])
        summary["clip"] = {"metrics": clip_result.metrics, "losses": clip_result.losses}
        if background:
            # The builder runs on every thread once the LM is done (here it is done before the CLIP), so that its
            # thread count, and with it every number downstream, never depends on which process was faster.
            world_info, lm_result = background.result("world"), background.result("lm")
            torch.set_num_threads(config.threads)
        else:
            lm_result = _lm_stage(config, out, log, names)
        summary["world"] = world_info["stats"]
        with log.stage("build", "builder: WARC -> fetch -> filter -> CLIP placement -> interleaved shards"):
            built = stages.build_shards(
                world_info["warcs"], out / "world" / "images", out / "build",
                clip_result.full_weights, config.similarity_threshold,
            )  # fmt: skip
            if world_info["pair_list"] is not None:
                pairs = stages.convert_pairs(
                    world_info["pair_list"], out / "world" / "images", out / "build" / "pairs"
                )
                built.pairs_dir, built.pairs_stats, built.pairs_validation = pairs
            _log_build(log, built)
    except BaseException:
        if background:
            background.close(kill=True)
        raise
    if background:
        background.close()
    summary["lm"] = {
        "steps": lm_result.steps,
        "copy_accuracy": lm_result.copy_accuracy,
        "losses": lm_result.losses,
        "beside_clip": background is not None,
    }
    # Training: the data workers (one process per source) build batches on one core, the step computes on the rest.
    torch.set_num_threads(max(1, config.threads - 1))
    summary["build"] = {
        "stats": built.stats,
        "validation": built.validation,
        "pairs_stats": built.pairs_stats,
        "pairs_validation": built.pairs_validation,
    }
    model_dir, metrics = _train_stage(
        config, out, log, lm_result.directory, clip_result.visual_weights, built
    )
    summary["train"] = {"metrics": metrics}
    torch.set_num_threads(config.threads)
    summary["eval"] = _eval_stage(config, out, log, model_dir, names["heldout_names"])
    order = ["world", "clip", "lm", "build", "train", "eval"]
    stages_run = [k for k in order if k in log.seconds] + [k for k in log.seconds if k not in order]
    summary["timings"] = {k: log.seconds[k] for k in stages_run}
    summary["paths"] = _paths(out)
    with log.stage("report", "writing report.md, report.html and plots"):
        (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))
        report.write_report(out, summary)
    summary["timings"]["total"] = time.perf_counter() - log.started
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))
    log(f"quickstart finished in {summary['timings']['total']:.0f}s; open {out / 'report.html'}")
    return summary


class _BackgroundStage:
    """Stages run by a forked child process on its own torch threads; :meth:`result` waits for one's result.

    ``stages()`` yields ``(key, value)`` pairs; each reaches the parent (a pickle, through
    :class:`~flamingo.forked.ForkedIterator`) with the child's stage timings, which join the log's. An error in
    the child is raised by :meth:`result` with the child's traceback as a note.
    """

    def __init__(
        self, name: str, stages: Callable[[], Iterator[tuple[str, Any]]], threads: int, log: StageLog
    ) -> None:
        from flamingo.forked import ForkedIterator

        def with_timings() -> Iterator[tuple[str, Any, dict[str, float]]]:
            for key, value in stages():
                yield key, value, dict(log.seconds)

        self.name, self.log = name, log
        self.results: dict[str, Any] = {}
        self.items = ForkedIterator(with_timings, depth=2, name=name, threads=threads)
        self.process = self.items.process
        log(f"{name}: started in a second process ({threads} thread{'s' if threads > 1 else ''})")

    @staticmethod
    def available() -> bool:
        from flamingo.forked import ForkedIterator

        return ForkedIterator.available()

    def result(self, key: str) -> Any:
        """The value the child sent under ``key`` (waiting for it)."""
        while key not in self.results:
            try:
                got, value, seconds = next(self.items)
            except StopIteration:
                raise RuntimeError(f"the {self.name} process finished without sending {key!r}") from None
            self.results[got] = value
            for stage, spent in seconds.items():
                self.log.seconds.setdefault(stage, spent)
        return self.results[key]

    def close(self, kill: bool = False) -> None:
        """Let the child exit; ``kill``: stop it at once (the parent failed while it was running)."""
        self.items.close(kill=kill)


def _names(config: QuickstartConfig, out: Path) -> dict[str, Any]:
    """The invented names (training and held-out) and the world's tokenizer: all that LM pretraining needs."""
    from flamingo.quickstart import text, world

    train_names, heldout_names = world.invented_names(config.seed, train=config.train_names)
    root = out / "world"
    root.mkdir(parents=True, exist_ok=True)
    (root / "names.json").write_text(json.dumps({"train": train_names, "heldout": heldout_names}))
    words = world.vocabulary_words(pet_quiz=bool(config.pet_quiz or config.vqa_names or config.lm_pet_quiz))
    tokenizer = text.build_tokenizer(words, train_names + heldout_names)
    return {"train_names": train_names, "heldout_names": heldout_names, "tokenizer": tokenizer}


def _world_stage(config: QuickstartConfig, out: Path, log: StageLog, names: dict[str, Any]) -> dict[str, Any]:
    from flamingo.quickstart import pages, world

    with log.stage("world", "drawing pictures, writing web pages (WARC) and evaluation sets"):
        root = out / "world"
        warcs = pages.write_world_warcs(
            root, config.pages, names["train_names"], config.seed,
            pictures={k: tuple(v) for k, v in config.pictures.items()}, objects=tuple(config.bursty_objects),
            cast_intro=config.bursty_cast_intro, qa_kinds=tuple(config.qa_kinds),
            qa_whole_answers=config.qa_whole_answers, qa_style=config.qa_style, pet_quiz=config.pet_quiz,
        )  # fmt: skip
        pair_list = pages.write_alt_text_pairs(root, config.pairs, config.seed) if config.pairs else None
        eval_root = out / "eval" / "data"
        pages.write_caption_set(eval_root, train=256, test=config.eval_samples, seed=config.seed)
        cast = (
            pages.vqa_cast(config.seed, names["heldout_names"], config.vqa_cast) if config.vqa_names else None
        )
        pages.write_vqa_set(
            eval_root, train=256, test=config.eval_samples, seed=config.seed, name_share=config.vqa_names,
            cast=cast,
        )  # fmt: skip
        vocabulary = len(names["tokenizer"])
        stats = {
            "pages": dict(config.pages),
            "vocabulary": vocabulary,
            "heldout_combos": sorted(world.HELDOUT_COMBOS),
        }
        if cast:
            stats["vqa_cast"] = [
                {"name": name, "shape": shape, "colour": colour} for name, (shape, colour) in cast
            ]
        log(
            f"  {sum(config.pages.values())} pages in {len(warcs)} WARC files, {config.pairs} alt-text pairs; "
            f"vocabulary {vocabulary} words"
        )
    return {"warcs": warcs, "pair_list": pair_list, "stats": stats}


def _clip_stage(config: QuickstartConfig, out: Path, log: StageLog, names: list[str]) -> Any:
    from flamingo.quickstart.world_clip import train_clip

    with log.stage("clip", f"training the tiny CLIP ({config.clip_steps} steps, contrastive + attributes)"):
        result = train_clip(
            out / "backbones" / "clip", names, steps=config.clip_steps, seed=config.seed,
            attribute_weight=config.clip_attribute_weight, log=log, qa_style=config.qa_style,
            pet_quiz=bool(config.pet_quiz),
        )  # fmt: skip
        log("  " + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
    return result


def _lm_stage(config: QuickstartConfig, out: Path, log: StageLog, names: dict[str, Any]) -> Any:
    from flamingo.quickstart.world_lm_train import pretrain_lm

    with log.stage(
        "lm", f"pretraining the smeared-key LM until held-out copy accuracy >= {config.lm_copy_threshold}"
    ):
        result = pretrain_lm(
            out / "backbones" / "lm", names["tokenizer"], names["train_names"],
            names["heldout_names"], max_steps=config.lm_max_steps, threshold=config.lm_copy_threshold,
            seed=config.seed, log=log, qa_style=config.qa_style,
            pet_quiz=config.lm_pet_quiz,
        )  # fmt: skip
        accuracy = result.copy_accuracy[-1][1] if result.copy_accuracy else float("nan")
        log(f"  stopped after {result.steps} steps: held-out copy accuracy {accuracy:.3f}")
    return result


def _log_build(log: StageLog, built: Any) -> None:
    validation = built.validation
    log(
        f"  shards valid: {validation['ok']}; {validation['documents']} documents, {validation['images']} images; "
        f"images per document {validation['images_per_document']}"
    )
    if built.pairs_validation is not None:
        log(f"  pair shards valid: {built.pairs_validation['ok']}; {built.pairs_validation['pairs']} pairs")


def _train_stage(
    config: QuickstartConfig, out: Path, log: StageLog, lm_dir: Path, clip_visual: Path, built: Any
) -> tuple[Path, list[dict[str, Any]]]:
    from flamingo import Flamingo, FlamingoConfig
    from flamingo.model.card import write_model_card
    from flamingo.quickstart import stages

    with log.stage(
        "train", f"training Perceiver + cross-attention with the trainer ({config.train_steps} steps)"
    ):
        init_dir = stages.initial_model(
            lm_dir, clip_visual, out / "train" / "init", config.gate_init, config.seed
        )
        run = stages.train_config(
            init_dir, built.shards_dir, out / "train", config.train_steps, config.batch_size,
            config.similarity_threshold, config.seed, pair_shards=built.pairs_dir,
            pair_batch_size=config.pair_batch_size, pair_loss_weight=config.pair_loss_weight,
            pair_pack_tokens=config.pair_pack_tokens, max_images=_max_pictures(config),
            max_tokens=max(160, 16 * _max_pictures(config) + 16),
        )  # fmt: skip
        trained_dir, metrics = stages.train_adapters(run, log)
        log(f"  loss {metrics[0]['loss']:.3f} -> {metrics[-1]['loss']:.3f}")
        model = Flamingo.from_pretrained(str(trained_dir))
        model.save_pretrained(str(out / "model"), save_backbones=True)
        # The card names the model, so that flamingo serve's page calls it that rather than "model".
        write_model_card(
            out / "model", FlamingoConfig.load(out / "model" / "config.json"), name=QUICKSTART_MODEL_NAME
        )
    return out / "model", metrics


def _max_pictures(config: QuickstartConfig) -> int:
    """Pictures a training document keeps: the most any page has (at least 8). A picture's sentence, with its
    ``<image>`` and ``<|endofchunk|>``, is at most 16 tokens, so documents keep 16 tokens per picture plus 16."""
    return max([8, *(high for _, high in config.pictures.values())])


def _eval_stage(
    config: QuickstartConfig, out: Path, log: StageLog, model_dir: Path, heldout_names: list[str]
) -> dict[str, Any]:
    from flamingo import Flamingo, FlamingoProcessor
    from flamingo.eval.evaluator import evaluate
    from flamingo.eval.models import FlamingoEvalModel
    from flamingo.quickstart import report
    from flamingo.quickstart.episodes import run_conditions

    results: dict[str, Any] = {}
    with log.stage("eval", "novel-label episodes (0/4/8 shots, ablations), captions and VQA (0/4/8 shots)"):
        model = Flamingo.from_pretrained(str(model_dir))
        processor = FlamingoProcessor.from_model(model)
        episodes = {}
        for seed in config.seeds:
            episodes[seed] = run_conditions(model, processor, heldout_names, seed, config.episodes)
            scores = {k: v["open_accuracy"] for k, v in episodes[seed].items() if "open_accuracy" in v}
            log(f"  seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        results["episodes"] = episodes
        tasks = [str(TASKS_DIR / "world_captions.yaml"), str(TASKS_DIR / "world_vqa.yaml")]
        generic = evaluate(
            FlamingoEvalModel(model, processor), tasks, str(out / "eval" / "data"), shots=(0, 4, 8),
            seeds=config.seeds, query_set_size=256, batch_size=16, out_dir=out / "eval" / "results",
            progress=False,
        )  # fmt: skip
        results["generic"] = generic
        # OpenFlamingo's 0-shot prompt holds two text-only demonstrations, which already show the world's
        # answer format; 0 shots with no demonstration at all (as in the novel-label episodes) shows what the
        # demonstrations add. It does not depend on the seed, so one seed is run.
        no_demos = evaluate(
            FlamingoEvalModel(model, processor), tasks, str(out / "eval" / "data"), shots=(0,),
            seeds=config.seeds[:1], zero_shot_text_demos=0, query_set_size=256, batch_size=16,
            out_dir=out / "eval" / "results_no_demos", progress=False,
        )  # fmt: skip
        results["generic_no_demos"] = no_demos
        annotations = out / "eval" / "data" / "vqa" / "annotations_test.json"
        results["vqa_by_kind"] = report.vqa_by_kind(
            out / "eval" / "results" / "world_vqa" / "predictions.jsonl", annotations
        )
        results["vqa_by_kind_no_demos"] = report.vqa_by_kind(
            out / "eval" / "results_no_demos" / "world_vqa" / "predictions.jsonl", annotations
        )
        results["caption_outputs"] = report.caption_outputs(
            out / "eval" / "results" / "world_captions" / "predictions.jsonl"
        )
        results["caption_outputs_no_demos"] = report.caption_outputs(
            out / "eval" / "results_no_demos" / "world_captions" / "predictions.jsonl"
        )
        for task, data in generic.items():
            none = _shot_scores(no_demos[task]).get("0", float("nan"))
            log(f"  {task}: {json.dumps(_shot_scores(data))}; 0 shots without demonstrations: {none:.3f}")
    return results


def _shot_scores(results: dict[str, Any]) -> dict[str, float]:
    """``{shots: mean score}`` from a ``results.json`` of the generic evaluator."""
    from flamingo.quickstart.report import shot_scores

    return shot_scores(results)


def _paths(out: Path) -> dict[str, str]:
    names = {
        "warc": "world/warc", "images": "world/images", "clip": "backbones/clip", "lm": "backbones/lm",
        "shards": "build/shards", "pair_shards": "build/pairs/shards", "build_report": "build/report.md",
        "train_metrics": "train/metrics.jsonl",
        "model": "model", "eval_results": "eval/results", "report": "report.html",
    }  # fmt: skip
    return {k: str(out / v) for k, v in names.items()}


def _jsonable(value: Any) -> Any:
    """Summaries hold episodes (pictures); keep only what JSON can carry."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k != "episodes" or not isinstance(v, list)}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return repr(value)
