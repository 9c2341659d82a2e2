"""The few-shot evaluator: tasks x shots x seeds -> requests -> model -> predictions -> scores.

Like lm-evaluation-harness it batches *requests*, not tasks: the prompts of every task, shot count and seed
are built first, then all generation requests go through ``model.generate`` together (sorted so batches hold
similar decoding settings and lengths) and all classification requests through ``model.rank_classification``.
Under ``torchrun`` each process evaluates a shard of every task's examples (``flamingo.eval.distributed``);
rank 0 writes ``<out>/<task>/predictions.jsonl`` and ``results.json`` with every setting that affects scores.

    from flamingo.eval.evaluator import evaluate
    results = evaluate("ckpt/", ["coco", "vqav2"], "data/", shots=(0, 4, 8), out_dir="runs/eval")
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flamingo.distributed import DistInfo, barrier
from flamingo.eval.datasets import EvalExample
from flamingo.eval.demos import (
    Prompt,
    Rices,
    build_prompt,
    build_query_set,
    cached_embeddings,
    ensemble_prompts,
    ensemble_scores,
    select_demos,
)
from flamingo.eval.distributed import (
    broadcast_object,
    close_distributed,
    dedupe,
    gather_objects,
    init_distributed,
    shard_indices,
)
from flamingo.eval.models import EvalModel, FlamingoEvalModel, GenerateRequest, RankRequest
from flamingo.eval.postprocess import get_postprocessor
from flamingo.eval.results import PredictionRecord, write_results
from flamingo.eval.tasks import TaskSpec, load_task
from flamingo.model.devices import resolve_device
from flamingo.prompts import PromptConfig

DEMO_MODES = ("random", "rices")
TEST_SUBSET_SEED = 0  # the --num-samples subset is the same for every seed: seeds vary demonstrations only
MAX_RAW_CLASSES = 20  # predictions.jsonl keeps every class score up to this many classes, else the top 5

Embedder = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class _Slot:
    """Where one request's answer goes: task, shot count, seed, example index, ensemble member."""

    task: int
    shots: int
    seed: int
    index: int
    demo_ids: list[str]


@dataclass
class _TaskRun:
    """One task's data and this rank's share of it."""

    spec: TaskSpec
    test: list[EvalExample]
    train: list[EvalExample]
    local: list[int]
    num_test_total: int
    class_names: list[str] = field(default_factory=list)
    rices: Rices | None = None
    rices_demos: dict[int, list[EvalExample]] = field(default_factory=dict)


@dataclass
class _Requests:
    """Every request of a run, with the slot each answer belongs to."""

    generate: list[GenerateRequest] = field(default_factory=list)
    generate_slots: list[_Slot] = field(default_factory=list)
    rank: list[RankRequest] = field(default_factory=list)
    rank_slots: list[_Slot] = field(default_factory=list)


def _progress(iterable: Any, desc: str, total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# Data and demonstrations
# --------------------------------------------------------------------------------------------------


def _subset(examples: list[EvalExample], num_samples: int | None) -> list[EvalExample]:
    """``num_samples`` test examples drawn once (seeded), kept in file order; all when None."""
    if num_samples is None or num_samples >= len(examples):
        return examples
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, not {num_samples}.")
    keep = sorted(random.Random(TEST_SUBSET_SEED).sample(range(len(examples)), num_samples))
    return [examples[i] for i in keep]


def _load_task_run(spec: TaskSpec, data_root: str, num_samples: int | None, info: DistInfo) -> _TaskRun:
    full_test = spec.load_split("test", data_root)
    test = _subset(full_test, num_samples)
    if not test:
        raise ValueError(f"task {spec.name}: the test split under {data_root} has no examples.")
    train = spec.load_split("train", data_root)
    if not train:
        raise ValueError(f"task {spec.name}: the train split under {data_root} has no examples to show.")
    run = _TaskRun(spec, test, train, shard_indices(len(test), info.rank, info.world_size), len(test))
    if spec.task_type == "classification":
        # From the whole test split, so that --num-samples never narrows the candidates.
        run.class_names = spec.class_name_list(data_root, full_test)
        candidates = set(run.class_names)
        stray = sorted({e.label for e in test if e.label is not None and e.label not in candidates})
        if stray:
            raise ValueError(
                f"task {spec.name}: labels {stray[:5]} are not among its {len(candidates)} class names, so "
                "they could never be scored right; fix `class_names` in the task (from_data takes the test labels)."
            )
    return run


def _setup_rices(run: _TaskRun, embed: Embedder, encoder_name: str, cache_dir: Path, info: DistInfo) -> None:
    """Embed the training images (rank 0 first, through the on-disk cache) and find the demonstrations of
    this rank's examples: the k most similar training items, most similar last."""
    paths = [e.image_path for e in run.train]
    if info.is_main:
        train_embeddings = cached_embeddings(paths, encoder_name, embed, cache_dir)
    barrier(info)  # the other ranks then read rank 0's cache file instead of recomputing it
    if not info.is_main:
        train_embeddings = cached_embeddings(paths, encoder_name, embed, cache_dir)
    run.rices = Rices(run.train, train_embeddings)
    local = sorted(set(run.local))
    k = max(max(run.spec.shots), run.spec.zero_shot_text_demos)
    if not local or k == 0:
        return
    queries = [run.test[i] for i in local]
    found = run.rices.find(embed([q.image_path for q in queries]), k, queries)
    run.rices_demos = dict(zip(local, found))


def _demos(run: _TaskRun, example_index: int, shots: int, seed: int, query_set: list[EvalExample]):
    """The demonstrations of one example and whether their images are removed."""
    spec = run.spec
    if run.rices is None:
        return select_demos(spec, query_set, run.test[example_index], shots, seed)
    k = shots if shots > 0 else spec.zero_shot_text_demos
    nearest = run.rices_demos[example_index]
    return (nearest[len(nearest) - k :] if k else []), shots == 0


def _prompts(
    run: _TaskRun,
    index: int,
    shots: int,
    seed: int,
    query_set: list[EvalExample],
    options: dict[str, Any],
    tokens: tuple[str, str],
) -> list[Prompt]:
    """The prompts of one example; ``tokens``: the model's image marker and end of chunk."""
    demos, text_only = _demos(run, index, shots, seed, query_set)
    text_only = text_only or options["text_only_context"]
    example = run.test[index]
    if run.spec.task_type == "classification" and options["prompt_ensembles"] > 1 and len(demos) > 1:
        return ensemble_prompts(
            run.spec, demos, example, seed, options["prompt_ensembles"], text_only, *tokens
        )
    return [build_prompt(run.spec, demos, example, text_only, *tokens)]


def _build_requests(runs: Sequence[_TaskRun], options: dict[str, Any], model: EvalModel) -> _Requests:
    requests = _Requests()
    tokens = _model_tokens(model)
    for t, run in enumerate(runs):
        spec = run.spec
        for seed in spec.seeds:
            query_set = build_query_set(run.train, spec.query_set_size, seed)
            for shots in spec.shots:
                for index in run.local:
                    for prompt in _prompts(run, index, shots, seed, query_set, options, tokens):
                        slot = _Slot(t, shots, seed, index, prompt.demo_ids)
                        _add_request(requests, run, prompt, slot, tokens[1])
    return requests


def _model_tokens(model: EvalModel) -> tuple[str, str]:
    """The model's image marker and end of chunk (``EvalModel``'s defaults for a model that names none)."""
    return (
        getattr(model, "image_token", EvalModel.image_token),
        getattr(model, "eoc_token", EvalModel.eoc_token),
    )


def _add_request(requests: _Requests, run: _TaskRun, prompt: Prompt, slot: _Slot, eoc_token: str) -> None:
    if run.spec.task_type == "generation":
        d = run.spec.decoding
        stop = tuple(s for s in d.stop if s != eoc_token)  # the model stops at its end of chunk anyway
        requests.generate.append(
            GenerateRequest(
                prompt.text,
                list(prompt.image_paths),
                num_beams=d.num_beams,
                max_new_tokens=d.max_new_tokens,
                length_penalty=d.length_penalty,
                stop=stop,
            )
        )
        requests.generate_slots.append(slot)
    else:
        requests.rank.append(RankRequest(prompt.text, list(prompt.image_paths), run.class_names))
        requests.rank_slots.append(slot)


# --------------------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------------------


def _run_generation(model: EvalModel, requests: list[GenerateRequest], chunk: int, show: bool) -> list[str]:
    """All generation requests, sorted by decoding settings and prompt length, ``chunk`` per model call."""
    order = sorted(
        range(len(requests)), key=lambda i: (str(requests[i].decoding_key()), -len(requests[i].prompt))
    )
    outputs: list[str] = [""] * len(requests)
    bar = _progress(None, "generate", len(requests), show)
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        for i, text in zip(part, model.generate([requests[i] for i in part])):
            outputs[i] = text
        bar.update(len(part))
    bar.close()
    return outputs


def _run_ranking(model: EvalModel, requests: list[RankRequest], chunk: int, show: bool) -> list[torch.Tensor]:
    """All classification requests, ``chunk`` per model call; a call never mixes class-name lists."""
    scores: list[torch.Tensor] = []
    bar = _progress(None, "rank classes", len(requests), show)
    start = 0
    while start < len(requests):
        names = requests[start].class_names
        stop = start + 1
        while stop < len(requests) and stop - start < chunk and requests[stop].class_names is names:
            stop += 1
        scores.extend(model.rank_classification(requests[start:stop]).float().cpu())
        bar.update(stop - start)
        start = stop
    bar.close()
    return scores


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def _generation_records(
    runs: Sequence[_TaskRun], slots: Sequence[_Slot], outputs: Sequence[str]
) -> dict[int, list[PredictionRecord]]:
    records: dict[int, list[PredictionRecord]] = defaultdict(list)
    for slot, raw in zip(slots, outputs):
        run = runs[slot.task]
        example = run.test[slot.index]
        processed = get_postprocessor(run.spec.postprocess)(raw)
        extra = {"index": slot.index, "question": example.question}
        records[slot.task].append(
            PredictionRecord(
                example.id,
                slot.seed,
                slot.shots,
                slot.demo_ids,
                raw,
                processed,
                list(example.references),
                extra,
            )
        )
    return records


def _classification_record(run: _TaskRun, slot: _Slot, scores: torch.Tensor) -> PredictionRecord:
    """Scores (c,) of one example (ensemble already averaged) -> its record."""
    names, spec = run.class_names, run.spec
    example = run.test[slot.index]
    keep = range(len(names)) if len(names) <= MAX_RAW_CLASSES else scores.topk(5).indices.tolist()
    raw = {names[i]: float(scores[i]) for i in keep}
    if spec.metric == "roc_auc":
        processed: Any = float(scores.softmax(0)[names.index(spec.positive_class)])
    else:
        processed = names[int(scores.argmax())]
    references = [example.label] if example.label is not None else list(example.references)
    return PredictionRecord(
        example.id, slot.seed, slot.shots, slot.demo_ids, raw, processed, references, {"index": slot.index}
    )


def _classification_records(
    runs: Sequence[_TaskRun], slots: Sequence[_Slot], scores: Sequence[torch.Tensor]
) -> dict[int, list[PredictionRecord]]:
    """Average the scores of an example's ensemble prompts, then make one record per example."""
    grouped: dict[tuple[int, int, int, int], list[torch.Tensor]] = defaultdict(list)
    first_slot: dict[tuple[int, int, int, int], _Slot] = {}
    for slot, score in zip(slots, scores):
        key = (slot.task, slot.shots, slot.seed, slot.index)
        grouped[key].append(score)
        first_slot.setdefault(key, slot)
    records: dict[int, list[PredictionRecord]] = defaultdict(list)
    for key, members in grouped.items():
        slot = first_slot[key]
        records[slot.task].append(_classification_record(runs[slot.task], slot, ensemble_scores(members)))
    return records


def _record_key(record: PredictionRecord) -> tuple[int, int, int]:
    return (record.shots, record.seed, record.extra["index"])


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------


def _resolve_model(
    model: EvalModel | str,
    device: str,
    batch_size: int,
    info: DistInfo,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, int | str] | None = None,
    quantization: Any = None,
) -> EvalModel:
    if isinstance(model, str):
        if device == "cuda" and info.world_size > 1 and device_map is None:  # one GPU per torchrun process
            device = f"cuda:{info.local_rank}"
        return FlamingoEvalModel.from_pretrained(
            model,
            device=device,
            dtype=dtype,
            device_map=device_map,
            batch_size=batch_size,
            trust_remote_code=trust_remote_code,
            quantization=quantization,
        )
    if quantization is not None:
        raise ValueError(
            "quantization applies when evaluate() loads a checkpoint: pass its path, or quantize the model "
            "yourself (flamingo.model.quantize.quantize_backbones) before wrapping it"
        )
    if hasattr(model, "batch_size"):
        model.batch_size = batch_size
    return model


def _quantization_record(quantization: Any) -> dict[str, Any] | None:
    """How the backbones were quantized, as plain values for results.json (None: as stored)."""
    if quantization is None:
        return None
    from flamingo.model.quantize import parse_quantization

    return dataclasses.asdict(parse_quantization(quantization, "quantization"))


def _task_spec(
    name: str, shots, seeds, query_set_size: int, zero_shot_text_demos: int, prompts: PromptConfig
) -> TaskSpec:
    """The task file's spec with this run's shots, seeds, demonstration pool and the template its prompt names
    taken from ``prompts`` (so results record them)."""
    spec = load_task(name).with_prompts(prompts)
    return dataclasses.replace(
        spec,
        shots=tuple(int(s) for s in shots),
        seeds=tuple(int(s) for s in seeds),
        query_set_size=int(query_set_size),
        zero_shot_text_demos=int(zero_shot_text_demos),
    )


def evaluate(
    model: EvalModel | str,
    tasks: Sequence[str],
    data_root: str,
    shots: Sequence[int] = (0, 4, 8),
    seeds: Sequence[int] = (42, 43, 44),
    num_samples: int | None = None,
    query_set_size: int = 2048,
    demo_mode: str = "random",
    zero_shot_text_demos: int = 2,
    text_only_context: bool = False,
    prompt_ensembles: int = 1,
    batch_size: int = 8,
    out_dir: str | Path = "eval_results",
    rices_embedder: Embedder | None = None,
    rices_encoder_name: str | None = None,
    rices_cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    trust_remote_code: bool = False,
    prompts: PromptConfig | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, int | str] | None = None,
    quantization: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` (an ``EvalModel`` or a checkpoint directory) on ``tasks`` (names or YAML paths).

    ``shots``/``seeds``/``query_set_size``/``zero_shot_text_demos`` replace the task files' values;
    ``num_samples`` evaluates a fixed seeded subset of each test split; ``demo_mode="rices"`` picks the most
    similar training images (embedded by ``rices_embedder``, default ``model.embed_images``, cached on disk);
    ``text_only_context`` removes the demonstrations' images (an ablation); ``prompt_ensembles`` > 1
    averages classification scores over that many demonstration orders. A task file's named template (``prompt:
    caption``) comes from ``prompts`` when given, else from the model's own (``model.prompts``: the templates
    a checkpoint recorded). Writes ``<out_dir>/<task>/`` and
    returns ``{task: results}`` (the content of each ``results.json``) on every rank. ``trust_remote_code=True``
    lets a checkpoint whose LM needs its repository's own code run it. A checkpoint is loaded onto ``device``
    (``"auto"``: CUDA when present) in ``dtype`` (default float32 on the CPU, the checkpoint's own on a GPU), or
    split over devices by ``device_map`` (see :func:`flamingo.model.checkpoint.from_pretrained`);
    ``quantization`` (``"int8"`` / ``"int4"``) loads its frozen backbones in low-bit form (recorded in the
    results' options).
    """
    if demo_mode not in DEMO_MODES:
        raise ValueError(f"demo_mode must be one of {DEMO_MODES}, not {demo_mode!r}.")
    if prompt_ensembles < 1:
        raise ValueError(f"prompt_ensembles must be >= 1, not {prompt_ensembles}.")
    started = time.perf_counter()
    device = str(resolve_device(device))
    info = init_distributed(device)
    try:
        eval_model = _resolve_model(
            model, device, batch_size, info, trust_remote_code, dtype, device_map, quantization
        )
        templates = prompts if prompts is not None else getattr(eval_model, "prompts", EvalModel.prompts)
        specs = [_task_spec(t, shots, seeds, query_set_size, zero_shot_text_demos, templates) for t in tasks]
        options = {
            "num_samples": num_samples,
            "test_subset_seed": TEST_SUBSET_SEED,
            "demo_mode": demo_mode,
            "text_only_context": bool(text_only_context),
            "prompt_ensembles": int(prompt_ensembles),
            "batch_size": int(batch_size),
            "world_size": info.world_size,
            "rices_encoder": None,
            "quantization": _quantization_record(quantization),
        }
        runs, timings = _prepare(
            eval_model,
            specs,
            data_root,
            options,
            info,
            progress,
            out_dir,
            rices_embedder,
            rices_encoder_name,
            rices_cache_dir,
        )
        records, run_timings = _run(eval_model, runs, options, info, progress)
        timings |= run_timings
        timings["total_before_scoring"] = time.perf_counter() - started
        return _write(eval_model, runs, records, options, timings, data_root, out_dir, info)
    finally:
        close_distributed(info)


def _prepare(
    model: EvalModel,
    specs: Sequence[TaskSpec],
    data_root: str,
    options: dict[str, Any],
    info: DistInfo,
    progress: bool,
    out_dir: str | Path,
    embedder: Embedder | None,
    encoder_name: str | None,
    cache_dir: str | Path | None,
) -> tuple[list[_TaskRun], dict[str, float]]:
    start = time.perf_counter()
    runs = [_load_task_run(spec, data_root, options["num_samples"], info) for spec in specs]
    timings = {"load_data": time.perf_counter() - start}
    if options["demo_mode"] == "rices":
        start = time.perf_counter()
        embed = embedder or model.embed_images
        name = encoder_name or (f"{model.name}:embed_images" if embedder is None else "custom")
        options["rices_encoder"] = name
        folder = Path(cache_dir) if cache_dir is not None else Path(out_dir) / "rices_cache"
        for run in _progress(runs, "RICES embeddings", len(runs), progress and info.is_main):
            _setup_rices(run, embed, name, folder, info)
        timings["rices"] = time.perf_counter() - start
    return runs, timings


def _run(
    model: EvalModel, runs: Sequence[_TaskRun], options: dict[str, Any], info: DistInfo, progress: bool
) -> tuple[dict[int, list[PredictionRecord]], dict[str, float]]:
    """Build every request, run them, and gather this run's records (deduplicated) on every rank."""
    show = progress and info.is_main
    requests = _build_requests(runs, options, model)
    chunk = max(1, options["batch_size"]) * 16
    start = time.perf_counter()
    outputs = _run_generation(model, requests.generate, chunk, show)
    timings = {"generate": time.perf_counter() - start}
    start = time.perf_counter()
    scores = _run_ranking(model, requests.rank, chunk, show)
    timings["rank_classification"] = time.perf_counter() - start
    local = _generation_records(runs, requests.generate_slots, outputs)
    for task, recs in _classification_records(runs, requests.rank_slots, scores).items():
        local[task].extend(recs)
    records = {}
    for t in range(len(runs)):
        gathered = gather_objects(local.get(t, []), info)
        records[t] = dedupe(gathered, _record_key)
    return records, timings


def _write(
    model: EvalModel,
    runs: Sequence[_TaskRun],
    records: dict[int, list[PredictionRecord]],
    options: dict[str, Any],
    timings: dict[str, float],
    data_root: str,
    out_dir: str | Path,
    info: DistInfo,
) -> dict[str, dict[str, Any]]:
    """Rank 0 scores and writes each task; every rank returns rank 0's results."""
    results: dict[str, dict[str, Any]] = {}
    if info.is_main:
        for t, run in enumerate(runs):
            data = {
                "data_root": str(data_root),
                "num_test_examples": run.num_test_total,
                "num_train_examples": len(run.train),
                "test_ids": [e.id for e in run.test],
            }
            identity = {"model": model.describe(), "data": data, "settings": dict(options)}
            # Requests of all tasks ran together, so the timings are the whole run's.
            results[run.spec.name] = write_results(
                Path(out_dir) / run.spec.name, run.spec, records[t], **identity, timings=dict(timings)
            )
    return broadcast_object(results, info)
