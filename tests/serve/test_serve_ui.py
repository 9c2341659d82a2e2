"""The Gradio demo's callbacks (no browser): streaming through the API's worker, the API's rules, the preview,
the examples, and a mount that makes no network connection."""

from __future__ import annotations

import os
import re
import socket

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("gradio")
import gradio as gr
from fastapi.testclient import TestClient

from flamingo.io.inputs import InputError, read_upload
from flamingo.pipeline import Completion
from flamingo.serve.app import ServeLimits, create_app
from flamingo.serve.examples import example_specs
from flamingo.serve.server import load_server_pipeline
from flamingo.serve.ui import DemoBackend, PromptForm, _example_rows
from flamingo.serve.worker import BatchWorker

LIMITS = ServeLimits(max_images=3, max_new_tokens=32, max_beams=4, batch_wait_ms=5)


@pytest.fixture(scope="module")
def backend(model_dir, tmp_path_factory):
    pipeline = load_server_pipeline(
        str(model_dir), max_image_bytes=20_000, max_image_pixels=256 * 256, max_prompt_tokens=64
    )
    worker = BatchWorker(pipeline, max_batch_size=4, max_wait_ms=5)
    worker.start()
    yield DemoBackend(pipeline, worker, LIMITS, tmp_path_factory.mktemp("uploads"))
    worker.stop()


@pytest.fixture(scope="module")
def uploaded(backend, images) -> list[str]:
    """The test images as files in the backend's upload directory (where Gradio puts uploads)."""
    paths = []
    for i, image in enumerate(images):
        paths.append(f"{backend.upload_dir}/image{i}.png")
        image.save(paths[-1])
    return paths


def _values(demos, query, mode="greedy", max_new=12, beams=3, temperature=0.7, top_p=0.9, slots=2):
    """The page's inputs in order (see PromptForm.from_values); unused slots stay empty."""
    values = [len(demos)]
    for k in range(slots):
        values += list(demos[k]) if k < len(demos) else [None, ""]
    return (*values, *query, mode, max_new, beams, temperature, top_p)


def _run(backend, values):
    """Everything the generate callback yields, and the gr.Error it ends with (or None)."""
    seen = []
    try:
        for out in backend.generate(*values):
            seen.append(out)
    except gr.Error as err:
        return seen, err
    return seen, None


def test_generate_streams_from_the_worker_and_matches_the_pipeline(backend, uploaded, pipe, images):
    before = backend.worker.snapshot()["requests"]
    values = _values([(uploaded[0], "Output:a red circle")], (uploaded[1], "Output:"))
    seen, error = _run(backend, values)
    assert error is None
    expected = pipe(
        [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"], max_new_tokens=12
    )
    assert seen[-1][0] == expected and expected
    assert seen[-1][1].startswith("done · ") and "2 images" in seen[-1][1]
    assert backend.worker.snapshot()["requests"] == before + 1  # the API's worker ran it

    beam, _ = _run(backend, _values([(uploaded[0], "Output:a red circle")], (uploaded[1], "Output:"), "beam"))
    row = [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"]
    assert beam[-1][0] == pipe(row, max_new_tokens=12, num_beams=3)


class _HandFedWorker:
    """Takes the submitted job and lets the test feed its events one at a time."""

    def submit(self, job):
        self.job = job
        return job


def test_generate_shows_each_piece_as_it_arrives(backend, uploaded):
    worker = _HandFedWorker()
    hand_fed = DemoBackend(backend.pipeline, worker, LIMITS, backend.upload_dir)
    stream = hand_fed.generate(*_values([], (uploaded[1], "Output:")))
    assert next(stream) == ("", "generating…") and worker.job.stream
    shown = []
    for piece in ("Hel", "lo", " world"):
        worker.job.events.put(("text", piece))
        shown.append(next(stream))  # yielded before the next piece exists
    assert shown == [("Hel", "generating…"), ("Hello", "generating…"), ("Hello world", "generating…")]
    worker.job.events.put(("done", Completion("Hello world", 7, 3, 1)))
    answer, status = next(stream)
    assert answer == "Hello world" and status.startswith("done · 3 new tokens · 7 prompt tokens · 1 images")
    assert next(stream, None) is None and worker.job.cancelled.is_set()

    stopped = hand_fed.generate(*_values([], (uploaded[1], "Output:")))
    next(stopped)
    worker.job.events.put(("text", "Hel"))
    assert next(stopped)[0] == "Hel" and not worker.job.cancelled.is_set()
    stopped.close()  # what Gradio does on Stop or when the page goes away
    assert worker.job.cancelled.is_set()  # the worker's stopping criterion ends the generation


def _noise_png(path: str, size: int) -> str:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no_query", "upload a query image"),
        ("no_demo_text", "demonstration 1 has no text"),
        ("outside", "only images uploaded through the page"),
        ("link_outside", "only images uploaded through the page"),
        ("too_large", "the limit is 20000 bytes"),
        ("too_many_pixels", "the limit is 65536 pixels"),
        ("not_an_image", "not an image"),
        ("marker", "may not contain <image>"),
        ("long_prompt", "the limit is 64"),
        ("max_new", "max_new_tokens=500; the limit is 32"),
        ("beams", "num_beams=9; the limit is 4"),
    ],
)
def test_generate_refuses_what_the_api_refuses(backend, uploaded, tmp_path, case, words):
    upload_dir = backend.upload_dir
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    demo, query, settings = (uploaded[0], "Output:a red circle"), (uploaded[1], "Output:"), {}
    if case == "no_query":
        query = (None, "Output:")
    elif case == "no_demo_text":
        demo = (uploaded[0], "  ")
    elif case == "outside":
        query = (str(outside), "Output:")
    elif case == "link_outside":
        link = f"{upload_dir}/link.png"  # inside the folder, pointing out of it
        if not os.path.lexists(link):
            os.symlink(outside, link)
        query = (link, "Output:")
    elif case == "too_large":
        query = (_noise_png(f"{upload_dir}/noise.png", 200), "Output:")
    elif case == "too_many_pixels":
        Image.new("RGB", (600, 600)).save(f"{upload_dir}/big.png")
        query = (f"{upload_dir}/big.png", "Output:")
    elif case == "not_an_image":
        with open(f"{upload_dir}/fake.png", "wb") as f:
            f.write(b"%PDF-1.4 not an image")
        query = (f"{upload_dir}/fake.png", "Output:")
    elif case == "marker":
        demo = (uploaded[0], "Output:<image>")
    elif case == "long_prompt":
        demo = (uploaded[0], "word " * 100)
    elif case == "max_new":
        settings = {"max_new": 500}
    elif case == "beams":
        settings = {"mode": "beam", "beams": 9}
    seen, error = _run(backend, _values([demo], query, **settings))
    assert error is not None and words in error.message
    assert seen[-1] == ("", f"error: {error.message}")
    ok, error = _run(backend, _values([], (uploaded[2], "Output:"), max_new=3))
    assert error is None and ok[-1][1].startswith("done")  # still serving


def test_read_upload_reads_only_inside_the_upload_directory(tmp_path, images):
    from flamingo.io.inputs import ImagePolicy

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    images[0].save(uploads / "a.png")
    policy = ImagePolicy(allow_paths=False)  # the server's policy: uploads are read all the same
    assert read_upload(uploads / "a.png", uploads, policy).size == images[0].size
    for path in (tmp_path / "b.png", uploads / ".." / "b.png", uploads):
        images[1].save(tmp_path / "b.png")
        with pytest.raises(InputError, match="only images uploaded through the page") as err:
            read_upload(path, uploads, policy)
        assert err.value.status == 403
    with pytest.raises(InputError, match="upload the image again"):
        read_upload(uploads / "gone.png", uploads, policy)


def test_preview_shows_which_image_each_text_belongs_to(backend, uploaded):
    values = _values([(uploaded[0], "Output:<b>red</b>"), (uploaded[1], "Output:blue")], (None, "Output:"))
    html, status = backend.preview(*values)
    assert status == ""  # a changed prompt clears the last answer's status
    lines = re.findall(r'<div class="fl-line" title="([^"]+)">(.*?)</div>', html)
    assert [title for title, _ in lines] == ["demonstration 1", "demonstration 2", "query"]
    chips = [re.search(r"(<img[^>]*>)?image (\d)</span>", body).groups() for _, body in lines]
    assert [number for _, number in chips] == ["1", "2", "3"]
    assert [img is not None and "data:image/png;base64," in img for img, _ in chips] == [True, True, False]
    assert "Output:&lt;b&gt;red&lt;/b&gt;" in html and "<b>" not in html  # text shown as text
    assert "upload a query image" in html
    too_many = backend.preview(*_values([(uploaded[0], "<image>")], (uploaded[1], "")))[0]
    assert "may not contain &lt;image&gt;" in too_many


def test_examples_fill_in_valid_prompts(backend, pipe):
    rows = _example_rows(backend.slots, backend.upload_dir)
    specs = example_specs()
    assert len(rows) == len(specs) >= 3
    for values, spec in zip(rows, specs):
        form = PromptForm.from_values(tuple(values), backend.slots)
        text, images = backend.row(form)
        assert text == "".join(f"<image>{s['text']}<|endofchunk|>\n" for s in spec["shots"]) + (
            f"<image>{spec['query']['text']}"
        )
        assert len(images) == len(spec["shots"]) + 1 and form.mode == spec["settings"]["mode"]


def test_the_demo_follows_the_checkpoint_templates(backend, uploaded):
    """A quickstart-like model's templates put no newline between chunks and start the query at "Output:"; the
    demo's prompt follows the pipeline's templates (the checkpoint's own by default)."""
    from flamingo.pipeline import FlamingoPipeline
    from flamingo.quickstart.text import PROMPTS
    from flamingo.serve.ui import starting_query_text

    quick = DemoBackend(
        FlamingoPipeline(backend.pipeline.model, prompts=PROMPTS), backend.worker, LIMITS, backend.upload_dir
    )
    form = PromptForm.from_values(_values([(uploaded[0], "zorp")], (uploaded[1], "")), quick.slots)
    assert quick.row(form)[0] == "<image>zorp<|endofchunk|><image>"
    assert backend.row(form)[0] == "<image>zorp<|endofchunk|>\n<image>"  # OpenFlamingo's: a newline
    assert starting_query_text(PROMPTS.caption) == starting_query_text(backend.pipeline.prompts.caption)
    assert starting_query_text(backend.pipeline.prompts.caption) == "Output:"


def test_the_app_serves_the_demo_and_the_api_without_network(model_dir, monkeypatch):
    import gradio.analytics

    outside, calls = [], []
    real_connect = socket.socket.connect

    def connect(self, address):
        loopback = isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1", "localhost")
        if self.family in (socket.AF_INET, socket.AF_INET6) and not loopback:
            outside.append(address)
            raise OSError("no network in this test")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for name in ("version_check", "_do_analytics_request", "_do_normal_analytics_request"):
        monkeypatch.setattr(gradio.analytics, name, lambda *a, _n=name, **k: calls.append(_n))
    pipeline = load_server_pipeline(str(model_dir))
    with TestClient(create_app(pipeline, LIMITS, model_name="tiny")) as client:
        page = client.get("/")
        assert page.status_code == 200 and "Flamingo few-shot demo" in page.text
        assert client.get("/config").json()["analytics_enabled"] is False
        paths = client.get("/openapi.json").json()["paths"]
        assert set(paths) == {"/health", "/v1/examples", "/v1/generate"}  # the API, unchanged
        body = {"prompt": [{"type": "text", "text": "Output:"}], "max_new_tokens": 3}
        assert client.post("/v1/generate", json=body).status_code == 200
    assert outside == [] and calls == []


def test_a_new_page_shows_what_to_do_next_without_a_warning(backend, uploaded):
    fresh = backend.preview(*_values([(None, ""), (None, "")], (None, "Output:")))[0]  # the page as it opens
    assert "fl-problem" not in fresh and "⚠" not in fresh
    assert '<p class="fl-hint">demonstration 1 has no image' in fresh
    wrong = backend.preview(*_values([(uploaded[0], "<image>")], (None, "")))[0]
    assert "fl-problem" in wrong and "fl-hint" not in wrong  # a real problem is still shown as one


def test_demonstration_slots_follow_the_server_image_limit(backend):
    from flamingo.serve.ui import build_demo

    wide = DemoBackend(backend.pipeline, backend.worker, ServeLimits(), backend.upload_dir)
    assert wide.slots == ServeLimits().max_images - 1 == 32
    demo = build_demo(wide, model_name="flamingo-quickstart")
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {f"demo-{k}-image" for k in (1, 32)} <= ids and "demo-33-image" not in ids
    shots = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "shots")
    assert shots.maximum == 32 and demo.title == "flamingo-quickstart · Flamingo few-shot demo"
    form = PromptForm.from_values(_values([("a.png", "x")] * 32, (None, ""), slots=32), wide.slots)
    assert len(form.demos) == 32


def test_the_page_is_named_after_the_model_card(model_dir, tmp_path):
    import shutil

    from flamingo.model import FlamingoConfig
    from flamingo.model.card import write_model_card
    from flamingo.serve.server import model_display_name

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "README.md").unlink(missing_ok=True)
    assert model_display_name(str(folder)) == "model"  # no card: the folder's name
    config = FlamingoConfig.load(folder / "config.json")
    write_model_card(folder, config)
    assert model_display_name(str(folder)) == "model"  # the generic title names nothing
    write_model_card(folder, config, name="flamingo-quickstart")
    assert model_display_name(str(folder)) == "flamingo-quickstart"
    (folder / "README.md").write_text("# Shape namer\n\nA card a person wrote, without front matter.\n")
    assert model_display_name(str(folder)) == "Shape namer"
    assert model_display_name("org/hub-model") == "hub-model"
