"""The web demo: a Gradio page mounted at ``/`` of the API's FastAPI app (one port, one model worker).

A person builds a few-shot prompt from demonstrations (an image and its text each) and a query image, picks the
decoding settings and watches the answer stream in. The prompt preview numbers the images in prompt order, with
a thumbnail of each, and colours the text that belongs to it. Clicking an example fills in everything.

The prompt follows the model's ``interleaved`` template (``pipeline.prompts``: the checkpoint's own), and the query
box starts with the text of its captioning query. Every generation takes the API's path: the same prompt and
settings limits (``check_prompt_limits``,
``decoding_settings``), the same image rules (:func:`~flamingo.io.inputs.read_upload` under the pipeline's
``ImagePolicy``, images reduced after decoding), the same memory budget and the same
:class:`~flamingo.serve.worker.BatchWorker`. Images are read only from Gradio's
upload directory, never from a path a browser names. Gradio's analytics and version check are off, and its
scripts, styles and fonts come from the installed package: the page works with no internet.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from PIL import Image

from flamingo.io.images import decoded_bytes
from flamingo.io.inputs import ImagePolicy, InputError, read_upload
from flamingo.pipeline import Completion, FlamingoPipeline
from flamingo.prompts import PromptTemplate
from flamingo.serve.app import (
    ServeLimits,
    check_prompt_limits,
    decoding_settings,
    exception_payload,
    follow,
    reduced_side,
)
from flamingo.serve.budget import MemoryBudget, Reservation
from flamingo.serve.examples import example_specs
from flamingo.serve.worker import BatchWorker, Job

log = logging.getLogger(__name__)

MODES = ("greedy", "beam", "sample")
DEFAULTS = {"mode": "greedy", "max_new_tokens": 20, "num_beams": 3, "temperature": 0.7, "top_p": 0.9}
_COLOURS = 6  # preview colour classes fl-c0 .. fl-c5, one per image (cycled)


@dataclass(frozen=True)
class PromptForm:
    """What the page sends: the demonstrations in use, the query, and the decoding settings."""

    demos: list[tuple[str | None, str]]
    """(uploaded image path or None, text) of each demonstration in use."""
    query: tuple[str | None, str]
    mode: str
    max_new_tokens: int
    num_beams: int
    temperature: float
    top_p: float

    @classmethod
    def from_values(cls, values: tuple[Any, ...], slots: int) -> PromptForm:
        """The page's inputs in order: shots, (image, text) per slot, query image, query text, settings."""
        shots = max(0, min(int(values[0] or 0), slots))
        pairs = [(values[1 + 2 * k], values[2 + 2 * k] or "") for k in range(slots)]
        query_image, query_text, mode, max_new, beams, temperature, top_p = values[1 + 2 * slots :]
        return cls(
            demos=pairs[:shots],
            query=(query_image, query_text or ""),
            mode=mode if mode in MODES else "greedy",
            max_new_tokens=int(max_new),
            num_beams=int(beams),
            temperature=float(temperature),
            top_p=float(top_p),
        )

    def parts(self) -> list[tuple[str, str | None, str]]:
        """(label, image path or None, text) for each image of the prompt, in order."""
        demos = [(f"demonstration {k + 1}", image, text) for k, (image, text) in enumerate(self.demos)]
        return [*demos, ("query", *self.query)]

    def missing(self) -> str | None:
        """What the person still has to fill in, or None when the prompt is complete."""
        for k, (image, text) in enumerate(self.demos):
            if image is None:
                return f"demonstration {k + 1} has no image: upload one or use fewer demonstrations"
            if not text.strip():
                return f"demonstration {k + 1} has no text: write what the model should learn from its image"
        if self.query[0] is None:
            return "upload a query image: the model answers about it"
        return None


def few_shot_row(
    demos: list[tuple[Image.Image, str]],
    query: tuple[Image.Image, str],
    template: PromptTemplate,
    image_token: str,
    eoc_token: str,
) -> tuple[str, list[Image.Image]]:
    """The pipeline row of a few-shot prompt in ``template`` (an ``interleaved`` one, whose ``{text}`` is each
    part's text): each demonstration's text ends its chunk; the query's text is where the answer continues."""
    text = template.render([{"text": t} for _, t in demos], {"text": query[1]}, image_token, eoc_token)
    return text, [image for image, _ in demos] + [query[0]]


def starting_query_text(template: PromptTemplate) -> str:
    """The query box's starting text: a captioning query template without its image (``Output:``)."""
    return template.render([], {"question": "", "text": ""}, "", "")


class DemoBackend:
    """The page's callbacks: prompt preview and streaming generation, over the API's worker and rules."""

    def __init__(
        self,
        pipeline: FlamingoPipeline,
        worker: BatchWorker,
        limits: ServeLimits,
        upload_dir: str | Path,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.pipeline, self.worker, self.limits = pipeline, worker, limits
        self.upload_dir = str(Path(upload_dir).resolve())
        # As many demonstration slots as a prompt may hold beside its query; the shots slider shows the ones in use.
        self.slots = max(0, limits.max_images - 1)
        self.budget = budget or MemoryBudget(limits.max_pending_bytes)
        self.min_side = reduced_side(pipeline)

    def check(self, form: PromptForm) -> list[tuple[str, str | None, str]]:
        """The form's parts after the prompt limits, the same as the API's (no image is read yet)."""
        parts = form.parts()
        texts = [(f"{label} text", text) for label, _, text in parts]
        check_prompt_limits(texts, len(parts), self.pipeline.processor.image_token, self.limits)
        return parts

    def load(self, path: str, label: str, reservation: Reservation | None = None) -> Image.Image:
        """An uploaded image, reduced as the API reduces it; its memory is reserved in ``reservation``."""
        taken = 0

        def reserve(width: int, height: int, mode: str) -> None:
            nonlocal taken
            if reservation is not None:
                reservation.grow(need := decoded_bytes(width, height, mode))
                taken = need

        policy = self.pipeline.policy
        try:
            image = read_upload(path, self.upload_dir, policy, f"{label} image", self.min_side, reserve)
        except BaseException:
            if reservation is not None:
                reservation.shrink(taken)
            raise
        if reservation is not None:
            reservation.shrink(taken - decoded_bytes(image.width, image.height, "RGB"))
        return image

    def row(self, form: PromptForm, reservation: Reservation | None = None) -> tuple[str, list[Image.Image]]:
        """The pipeline row for a complete form, every image read under the pipeline's image policy (and, with
        ``reservation``, the server's memory budget)."""
        if problem := form.missing():
            raise InputError(problem, "incomplete_prompt")
        loaded = [(self.load(path, label, reservation), text) for label, path, text in self.check(form)]
        processor, template = self.pipeline.processor, self.pipeline.prompts.interleaved
        return few_shot_row(loaded[:-1], loaded[-1], template, processor.image_token, processor.eoc_token)

    def generate(self, *values: Any) -> Iterator[tuple[str, str]]:
        """Yields (answer so far, status) while the worker streams the answer; an error ends in the status line
        and a Gradio error message, with the API's wording."""
        import gradio as gr

        try:
            form = PromptForm.from_values(values, self.slots)
            settings = decoding_settings(
                self.limits,
                form.max_new_tokens,
                form.num_beams if form.mode == "beam" else 1,
                form.temperature if form.mode == "sample" else 0.0,
                form.top_p,
            )
            reservation = self.budget.reservation()
            try:
                row = self.row(form, reservation)
                job = self.worker.submit(
                    Job(row=row, settings=settings, stream=True, reservation=reservation)
                )
            except BaseException:
                reservation.release()
                raise
            yield "", "generating…"
            answer = ""
            with contextlib.closing(follow(job, self.limits.request_timeout_s)) as items:  # Stop: cancelled
                for item in items:
                    if isinstance(item, str):
                        answer += item
                        yield answer, "generating…"
                    else:
                        yield answer, status_line(item, job)
        except Exception as err:  # the server keeps serving
            if not isinstance(err, InputError):
                log.exception("demo generation failed")
            message = exception_payload(err)[1]["error"]["message"]
            yield "", f"error: {message}"
            raise gr.Error(message, title="Cannot generate") from err

    def preview(self, *values: Any) -> tuple[str, str]:
        """The prompt as the model will read it (numbered image chips with thumbnails, and their text), and an
        empty status: an answer shown before the prompt changed no longer belongs to it."""
        return self._preview_html(PromptForm.from_values(values, self.slots)), ""

    def _preview_html(self, form: PromptForm) -> str:
        try:
            parts = self.check(form)
        except InputError as err:
            return _problem(err.message)
        pieces, problems = [], []
        for index, (label, path, text) in enumerate(parts):
            colour = f"fl-c{index % _COLOURS}"
            thumb = ""
            if path is not None:
                try:
                    thumb = f'<img alt="" src="{_thumbnail(path, self.upload_dir, self.pipeline.policy)}">'
                except InputError as err:
                    problems.append(f"{label}: {err.message}")
            chip = f'<span class="fl-chip {colour}">{thumb}image {index + 1}</span>'
            eoc = html.escape(self.pipeline.processor.eoc_token)
            end = f'<span class="fl-eoc">{eoc}</span>' if label != "query" else ""
            cursor = '<span class="fl-cursor" title="the answer continues here">▍</span>' if not end else ""
            segment = f'<span class="fl-seg {colour}">{html.escape(text)}</span>'
            pieces.append(f'<div class="fl-line" title="{label}">{chip}{segment}{end}{cursor}</div>')
        notes = "".join(_problem(p) for p in problems)
        if not problems and (step := form.missing()):
            # An unfinished prompt is not an error: a new page starts unfinished, so say what comes next plainly.
            notes = _hint(step)
        return f'<div class="fl-preview">{"".join(pieces)}</div>{notes}'

    def layout(self, shots: Any) -> list[Any]:
        """Show the demonstration slots in use; the query's label says which image number it is."""
        import gradio as gr

        used = max(0, min(int(shots or 0), self.slots))
        slots = [gr.update(visible=k < used) for k in range(self.slots)]
        return [*slots, gr.update(label=f"Query image (image {used + 1})")]


def status_line(completion: Completion, job: Job) -> str:
    """The status after an answer: tokens, images and time, or that the model stopped at once."""
    ms = round((time.monotonic() - job.enqueued_at) * 1000)
    what = (
        f"{completion.completion_tokens} new tokens"
        if completion.text
        else "empty answer: the model stopped at once"
    )
    return f"done · {what} · {completion.prompt_tokens} prompt tokens · {completion.images} images · {ms} ms"


def _problem(message: str) -> str:
    return f'<p class="fl-problem">⚠ {html.escape(message)}</p>'


def _hint(message: str) -> str:
    return f'<p class="fl-hint">{html.escape(message)}</p>'


@lru_cache(maxsize=128)
def _thumbnail(path: str, upload_dir: str, policy: ImagePolicy) -> str:
    """A small PNG data URL of an uploaded image (read under ``policy``); an upload's path names its content."""
    image = read_upload(path, upload_dir, policy, "image")
    image.thumbnail((48, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _settings_visibility(mode: str) -> list[Any]:
    import gradio as gr

    return [gr.update(visible=mode == "beam"), *[gr.update(visible=mode == "sample")] * 2]


@dataclass
class _Page:
    """The page's components that callbacks read or write."""

    shots: Any
    groups: list[Any]
    demo_inputs: list[Any]  # image, text of each slot
    query_image: Any
    query_text: Any
    preview: Any
    settings: list[Any]  # mode, max new tokens, beams, temperature, top-p
    answer: Any = None
    status: Any = None

    @property
    def inputs(self) -> list[Any]:
        """In the order :meth:`PromptForm.from_values` reads them."""
        return [self.shots, *self.demo_inputs, self.query_image, self.query_text, *self.settings]


def _prompt_builder(slots: int, query_start: str) -> _Page:
    """Left column: how many demonstrations, an (image, text) box per slot, the query, the prompt preview."""
    import gradio as gr

    image_box = {"type": "filepath", "image_mode": None, "sources": ["upload", "clipboard"], "height": 150}
    used = min(2, slots)
    shots = gr.Slider(0, slots, value=used, step=1, label="Demonstrations", elem_id="shots")
    groups, demo_inputs = [], []
    for k in range(slots):
        with gr.Group(visible=k < used) as group, gr.Row():
            image = gr.Image(
                label=f"Demonstration {k + 1} (image {k + 1})", elem_id=f"demo-{k + 1}-image", **image_box
            )
            text = gr.Textbox(
                label=f"Demonstration {k + 1} text",
                placeholder="Output:a red circle",
                lines=3,
                elem_id=f"demo-{k + 1}-text",
            )
        groups.append(group)
        demo_inputs += [image, text]
    with gr.Group(), gr.Row():
        query_image = gr.Image(label=f"Query image (image {used + 1})", elem_id="query-image", **image_box)
        query_text = gr.Textbox(label="Query text", value=query_start, lines=3, elem_id="query-text")
    gr.Markdown("**Prompt preview**: the model reads it top to bottom; each image comes before its text.")
    preview = gr.HTML(elem_id="preview")
    return _Page(shots, groups, demo_inputs, query_image, query_text, preview, settings=[])


def _settings_panel(limits: ServeLimits) -> list[Any]:
    """Decoding mode and the settings that apply to it (the others stay hidden)."""
    import gradio as gr

    def slider(low: float, high: float, key: str, step: float, label: str, visible: bool = False) -> Any:
        value = min(DEFAULTS[key], high)
        elem = key.replace("_", "-")
        return gr.Slider(low, high, value=value, step=step, label=label, visible=visible, elem_id=elem)

    return [
        gr.Radio(list(MODES), value=DEFAULTS["mode"], label="Decoding", elem_id="mode"),
        slider(1, limits.max_new_tokens, "max_new_tokens", 1, "Max new tokens", visible=True),
        slider(1, limits.max_beams, "num_beams", 1, "Beams"),
        slider(0.05, 2.0, "temperature", 0.05, "Temperature"),
        slider(0.05, 1.0, "top_p", 0.05, "Top-p"),
    ]


def build_demo(backend: DemoBackend, model_name: str = "") -> Any:
    """The Gradio Blocks of the page (not yet mounted)."""
    import gradio as gr

    title = f"{model_name} · Flamingo few-shot demo" if model_name else "Flamingo few-shot demo"
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(_intro(model_name), elem_id="intro")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                page = _prompt_builder(backend.slots, starting_query_text(backend.pipeline.prompts.caption))
            with gr.Column(scale=2):
                page.settings = _settings_panel(backend.limits)
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="secondary", elem_id="stop")
                page.answer = gr.Textbox(label="Answer", lines=5, interactive=False, elem_id="answer")
                page.status = gr.Markdown("", elem_id="status")
                gr.Examples(
                    _example_rows(backend.slots, backend.upload_dir),
                    inputs=page.inputs,
                    example_labels=[spec["title"] for spec in example_specs()],
                    label="Examples: click one to fill in the prompt and the settings",
                    elem_id="examples",
                )
        _wire(backend, page, demo, run, stop)
    return demo


def _wire(backend: DemoBackend, page: _Page, demo: Any, run: Any, stop: Any) -> None:
    """The events: layout and settings visibility, the live preview, generate and stop (none in Gradio's API)."""
    import gradio as gr

    quiet = {"api_visibility": "private", "show_progress": "hidden"}
    page.shots.change(backend.layout, page.shots, [*page.groups, page.query_image], **quiet)
    page.settings[0].change(_settings_visibility, page.settings[0], page.settings[2:], **quiet)
    prompt_fields = [page.shots, page.query_image, page.query_text, *page.demo_inputs]
    gr.on(
        [*(c.change for c in prompt_fields), demo.load],
        backend.preview,
        inputs=page.inputs,
        outputs=[page.preview, page.status],
        trigger_mode="always_last",
        **quiet,
    )
    running = run.click(
        backend.generate,
        page.inputs,
        [page.answer, page.status],
        api_visibility="private",
        show_progress="minimal",
    )
    stop.click(lambda: "stopped", None, page.status, cancels=[running], **quiet)


def _intro(model_name: str) -> str:
    model = f" · model `{model_name}`" if model_name else ""
    return (
        f"## Flamingo few-shot demo{model}\n"
        "Show the model a few examples (an image and its text), then a query image: it continues the query's text "
        "the way the examples did. The same model answers the HTTP API ([docs](/docs))."
    )


def _example_rows(slots: int, upload_dir: str) -> list[list[Any]]:
    """One row of page inputs per example, its images written as PNG files in the upload directory."""
    folder = Path(tempfile.mkdtemp(prefix="flamingo-examples-", dir=upload_dir))
    rows = []
    for e, spec in enumerate(example_specs()):
        shots = spec["shots"][:slots]
        values: list[Any] = [len(shots)]
        for k in range(slots):
            if k < len(shots):
                path = folder / f"example{e}-demo{k + 1}.png"
                shots[k]["image"].save(path)
                values += [str(path), shots[k]["text"]]
            else:
                values += [None, ""]
        query = folder / f"example{e}-query.png"
        spec["query"]["image"].save(query)
        settings = {**DEFAULTS, **spec["settings"]}
        values += [str(query), spec["query"]["text"], settings["mode"], settings["max_new_tokens"]]
        values += [settings["num_beams"], settings["temperature"], settings["top_p"]]
        rows.append(values)
    return rows


CSS = """
.fl-preview { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; line-height: 2.2; }
.fl-line { display: flex; flex-wrap: wrap; align-items: center; gap: 4px; }
.fl-chip { display: inline-flex; align-items: center; gap: 4px; padding: 1px 7px 1px 2px; border-radius: 6px;
           color: #fff; font-weight: 600; }
.fl-chip img { width: 22px; height: 22px; border-radius: 4px; object-fit: cover; }
.fl-seg { padding: 1px 4px; border-radius: 4px; border-bottom: 3px solid; white-space: pre-wrap; }
.fl-eoc { color: #8a8f99; } .fl-cursor { color: #e2577a; font-weight: 700; }
.fl-problem { color: #b3261e; margin: 4px 0; }
.fl-hint { color: #5f6368; margin: 4px 0; }
.fl-chip.fl-c0 { background: #e2577a; } .fl-seg.fl-c0 { background: #fdeef2; border-color: #e2577a; }
.fl-chip.fl-c1 { background: #2f8fd8; } .fl-seg.fl-c1 { background: #eaf4fc; border-color: #2f8fd8; }
.fl-chip.fl-c2 { background: #4aa34a; } .fl-seg.fl-c2 { background: #edf7ec; border-color: #4aa34a; }
.fl-chip.fl-c3 { background: #d9921c; } .fl-seg.fl-c3 { background: #fcf3e4; border-color: #d9921c; }
.fl-chip.fl-c4 { background: #8b5cc9; } .fl-seg.fl-c4 { background: #f3eefb; border-color: #8b5cc9; }
.fl-chip.fl-c5 { background: #1fa39a; } .fl-seg.fl-c5 { background: #e8f7f5; border-color: #1fa39a; }
"""


def mount_demo(
    app: FastAPI,
    pipeline: FlamingoPipeline,
    worker: BatchWorker,
    limits: ServeLimits,
    model_name: str = "",
    budget: MemoryBudget | None = None,
) -> None:
    """Mount the page at ``/`` of ``app`` (after the API routes, which keep their paths), with Gradio's
    telemetry, version check, server-side rendering, MCP server and run history off; its generations share
    the API's memory ``budget``."""
    # Read by Gradio when it imports and whenever it would report usage or check for a newer version.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio as gr
    from gradio.utils import get_upload_folder

    upload_dir = get_upload_folder()  # where Gradio puts uploads: GRADIO_TEMP_DIR, else <temp dir>/gradio
    Path(upload_dir).mkdir(parents=True, exist_ok=True)
    demo = build_demo(DemoBackend(pipeline, worker, limits, upload_dir, budget), model_name)
    demo.queue(max_size=limits.max_queue, default_concurrency_limit=limits.max_batch_size)
    gr.mount_gradio_app(
        app,
        demo,
        path="/",
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        max_file_size=pipeline.policy.max_image_bytes,
        theme=gr.themes.Default(primary_hue="rose"),
        css=CSS,
    )
