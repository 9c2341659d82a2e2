"""FlamingoPipeline: benchmark prompts, post-processing, rank classification, streaming, batching, inputs."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest
import torch

from flamingo.io import addresses
from flamingo.io import inputs as image_rules
from flamingo.io.inputs import ImagePolicy, InputError
from flamingo.pipeline import FlamingoPipeline, _StreamCleaner, postprocess_caption, postprocess_vqa


def test_prompts_follow_the_benchmark_templates(pipe):
    """A checkpoint that recorded no templates gets OpenFlamingo's benchmark prompts."""
    assert pipe.caption_prompt(["a cat", "a dog"]) == (
        "<image>Output:a cat<|endofchunk|>\n<image>Output:a dog<|endofchunk|>\n<image>Output:"
    )
    assert pipe.vqa_prompt([("What is it?", "cat")], "Why?") == (
        "<image>Question:What is it? Short answer:cat<|endofchunk|>\n<image>Question:Why? Short answer:"
    )
    assert pipe.classify_prompt(["tench", "goldfish"]) == (
        "<image>Output:tench<|endofchunk|><image>Output:goldfish<|endofchunk|><image>Output:"
    )
    assert pipe.caption_prompt([]) == "<image>Output:"


def test_helpers_send_the_templated_prompt_and_post_process(pipe, images, monkeypatch):
    seen = []

    def fake_generate(rows, **generation):
        seen.append((rows[0], generation))
        return [type("C", (), {"text": 'a "red" dog Output:junk, more Question: x'})()]

    monkeypatch.setattr(pipe, "generate", fake_generate)
    assert pipe.caption(images[1], demos=[(images[0], "a circle")]) == "a red dog"
    assert seen[-1][0] == (pipe.caption_prompt(["a circle"]), [images[0], images[1]])
    assert seen[-1][1] == {"num_beams": 3, "max_new_tokens": 20}
    assert (
        pipe.vqa(images[1], "Colour?", demos=[(images[0], "Shape?", "circle")]) == 'a "red" dog Output:junk'
    )
    assert seen[-1][0] == (pipe.vqa_prompt([("Shape?", "circle")], "Colour?"), [images[0], images[1]])
    assert seen[-1][1]["max_new_tokens"] == 5


@pytest.mark.parametrize(
    ("text", "caption", "answer"),
    [
        ("two dogs Output:a cat", "two dogs", "two dogs Output:a cat"),
        ('"quoted" text', "quoted text", '"quoted" text'),
        ("yes, it is Question:what", "yes, it is Question:what", "yes"),
        ("blue Short answer:red", "blue Short answer:red", "blue"),
        ("no Answer:yes", "no Answer:yes", "no"),
    ],
)
def test_post_processing(text, caption, answer):
    assert postprocess_caption(text) == caption
    assert postprocess_vqa(text) == answer


def test_post_processing_agrees_with_the_evaluator():
    evaluator = pytest.importorskip("flamingo.eval.postprocess")
    for text in [
        "two dogs Output:a cat",
        '"a" b',
        "yes, it is Question:what",
        "blue Short answer:red",
        " x , y",
    ]:
        assert postprocess_caption(text) == evaluator.postprocess_caption(text)
        assert postprocess_vqa(text) == evaluator.postprocess_vqa(text).strip()


def _manual_mean_logprob(pipe, row, name: str) -> float:
    """One class scored alone: prompt ids + the name's own ids, a full forward, mean log-prob of the name."""
    batch = pipe.prepare([row])
    cont = torch.tensor(pipe.processor.tokenizer(name, add_special_tokens=False)["input_ids"])
    ids = torch.cat([batch["input_ids"][0], cont])[None]
    with torch.no_grad():
        logits = pipe.model(batch["images"], ids, torch.ones_like(ids), image_mask=batch["image_mask"]).logits
    logp = logits[0, :-1].float().log_softmax(-1)
    s = batch["input_ids"].shape[1]
    return float(torch.stack([logp[s - 1 + i, tok] for i, tok in enumerate(cont.tolist())]).mean())


def test_classify_picks_the_highest_mean_log_prob(pipe, images):
    names = ["red", "a blue square", "green triangle on a mat", "the cat"]
    demos = [(images[0], "red"), (images[1], "a blue square")]
    scores = pipe.class_scores(images[2], names, demos=demos, batch_size=3)  # two chunks
    row = (pipe.classify_prompt([label for _, label in demos]), [images[0], images[1], images[2]])
    manual = {n: _manual_mean_logprob(pipe, row, n) for n in names}
    assert list(scores) == names
    assert scores == pytest.approx(manual, abs=1e-4)
    assert pipe.classify(images[2], names, demos=demos) == max(manual, key=manual.get)
    assert len(set(round(v, 4) for v in scores.values())) == len(names)  # the scores really differ


def test_stream_yields_the_same_text_as_generate(pipe, images):
    for row in ([images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"], ["the cat sat on"]):
        stream = pipe.stream(row, max_new_tokens=16)
        pieces = list(stream)
        assert "".join(pieces) == pipe(row, max_new_tokens=16) == stream.completion.text
    beams = pipe.stream(["the cat sat on"], max_new_tokens=8, num_beams=2)
    assert "".join(beams) == pipe(["the cat sat on"], max_new_tokens=8, num_beams=2)


def test_stream_cleaner_matches_decode_cleanup(pipe):
    cleaner = _StreamCleaner(pipe.processor)
    pieces = [cleaner.feed(p) for p in [" Hel", "lo ", " ", "world", "<|endofchunk|>", " junk"]] + [
        cleaner.finish()
    ]
    assert "".join(pieces) == "Hello  world"
    assert pieces[2] == ""  # trailing spaces wait until text follows them


def test_stream_raises_errors_from_the_generation_thread(pipe, images):
    with pytest.raises(ValueError, match="markers"):
        list(pipe.stream(("<image><image>", [images[0]]), max_new_tokens=4))


def test_batch_equals_single_rows(pipe, images):
    rows = [
        [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"],
        [images[2], "Output:"],
        ["a text only prompt"],
    ]
    assert pipe(rows, max_new_tokens=10) == [pipe(r, max_new_tokens=10) for r in rows]
    scored = [pipe.score_continuations(("<image>Output:", [im]), ["a cat"])[0] for im in images[2:]]
    assert scored[0] != pytest.approx(scored[1], abs=1e-6)  # the images reach the model


def test_paths_load_only_when_allowed(pipe, images, tmp_path):
    path = tmp_path / "a.png"
    images[0].save(path)
    assert pipe([str(path), "Output:"], max_new_tokens=6) == pipe([images[0], "Output:"], max_new_tokens=6)
    strict = FlamingoPipeline(pipe.model, policy=ImagePolicy(allow_paths=False))
    assert strict.load_item(str(path)) == str(path)  # just text now
    with pytest.raises(InputError, match="reading local files is disabled"):
        strict.load_item(path)
    with pytest.raises(InputError, match="file: URLs are never read"):
        pipe.load_item("file:///etc/passwd")
    with pytest.raises(InputError, match="fetching image URLs is disabled"):
        pipe.load_item("http://example.com/a.png")


@pytest.fixture
def image_server(tmp_path, images):
    """A loopback HTTP server: /a.png, /big.png, /nolength (50 kB, no length), /hop (redirect to 10.0.0.1)."""
    images[0].save(tmp_path / "a.png")
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + b"0" * 50_000)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def do_GET(self):
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.1/secret.png")
                self.end_headers()
                return
            if self.path == "/nolength":  # no Content-Length: only the byte count while reading can stop it
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"0" * 50_000)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_url_fetching_rules(image_server, images, monkeypatch):
    open_policy = ImagePolicy(allow_urls=True, allow_private_urls=True, max_image_bytes=20_000)
    fetched = image_rules.fetch_image_url(f"{image_server}/a.png", open_policy)
    assert fetched.tobytes() == images[0].convert("RGB").tobytes()
    with pytest.raises(InputError, match="is 50004 bytes; the limit is 20000 bytes"):
        image_rules.fetch_image_url(f"{image_server}/big.png", open_policy)  # refused from Content-Length
    with pytest.raises(InputError, match="over the limit of 20000 bytes"):
        image_rules.fetch_image_url(f"{image_server}/nolength", open_policy)  # refused while reading
    public_only = ImagePolicy(allow_urls=True)
    with pytest.raises(InputError, match="non-public address"):
        image_rules.fetch_image_url(f"{image_server}/a.png", public_only)
    # Pretend the loopback server is public: its redirect to 10.0.0.1 must still be refused, unconnected.
    monkeypatch.setattr(
        addresses, "address_refusal", lambda a, *flags: None if a == "127.0.0.1" else "private"
    )
    connected = []
    real = socket.create_connection
    monkeypatch.setattr(
        socket, "create_connection", lambda addr, *a, **k: connected.append(addr) or real(addr, *a, **k)
    )
    with pytest.raises(InputError, match=r"non-public address \(10\.0\.0\.1\)"):
        image_rules.fetch_image_url(f"{image_server}/hop", public_only)
    assert [host for host, _ in connected] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("10.1.2.3", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("2606:4700::1111", True),
        ("224.0.0.1", False),
    ],
)
def test_address_rules(address, public):
    assert image_rules.address_allowed(address) is public


# ---------------------------------------------------------------------------------------------- templates


def _checkpoint_copy(model_dir, tmp_path, prompts=None, drop_prompts=False):
    """A copy of the tiny checkpoint whose config.json records ``prompts`` (or has no prompts section)."""
    import dataclasses
    import json
    import shutil

    path = tmp_path / "ckpt"
    shutil.copytree(model_dir, path)
    config = json.loads((path / "config.json").read_text())
    if drop_prompts:
        config.pop("prompts", None)
    if prompts is not None:
        config["prompts"] = dataclasses.asdict(prompts)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_the_pipeline_uses_the_templates_its_checkpoint_recorded(model_dir, tmp_path, images, monkeypatch):
    """A quickstart-like checkpoint records ``{image}{label}{eoc}`` (no "Output:") for classification; the
    pipeline's classify scores the class names after exactly that prompt, not OpenFlamingo's."""
    import flamingo.pipeline as pipeline_module
    from flamingo.prompts import OPENFLAMINGO
    from flamingo.quickstart.text import PROMPTS

    loaded = FlamingoPipeline.from_pretrained(_checkpoint_copy(model_dir, tmp_path, PROMPTS))
    assert loaded.prompts == PROMPTS and loaded.model.config.prompts == PROMPTS
    assert loaded.classify_prompt(["red"]) == "<image>red<|endofchunk|><image>"
    assert loaded.caption_prompt(["a cat"]) == "<image>Output:a cat<|endofchunk|><image>Output:"
    prompts_seen = []
    original = pipeline_module.score_continuations

    def spy(model, input_ids, *args, **kwargs):
        prompts_seen.append(loaded.processor.tokenizer.decode(input_ids[0]))
        return original(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "score_continuations", spy)
    names = ["red", "blue"]
    scores = loaded.class_scores(images[1], names, demos=[(images[0], "red")])
    assert prompts_seen == ["<image>red<|endofchunk|><image>"]
    assert loaded.classify(images[1], names, demos=[(images[0], "red")]) == max(scores, key=scores.get)
    # Explicit arguments override the checkpoint's templates: for the pipeline, or for one call.
    benchmark = FlamingoPipeline(loaded.model, prompts=OPENFLAMINGO)
    assert benchmark.classify_prompt(["red"]) == "<image>Output:red<|endofchunk|><image>Output:"
    loaded.class_scores(images[1], names, demos=[(images[0], "red")], template=OPENFLAMINGO.classify)
    assert prompts_seen[-1] == "<image>Output:red<|endofchunk|><image>Output:"


def test_a_checkpoint_without_templates_loads_with_the_benchmark_ones(model_dir, tmp_path):
    import json

    from flamingo.prompts import OPENFLAMINGO

    path = _checkpoint_copy(model_dir, tmp_path, drop_prompts=True)
    assert "prompts" not in json.loads((path / "config.json").read_text())
    assert FlamingoPipeline.from_pretrained(path).prompts == OPENFLAMINGO


def test_the_evaluator_takes_the_checkpoint_templates_for_named_task_prompts(model_dir, tmp_path):
    from flamingo.eval.models import FlamingoEvalModel
    from flamingo.eval.tasks import load_task
    from flamingo.prompts import OPENFLAMINGO
    from flamingo.quickstart.run import TASKS_DIR
    from flamingo.quickstart.text import PROMPTS

    model = FlamingoPipeline.from_pretrained(_checkpoint_copy(model_dir, tmp_path, PROMPTS)).model
    evaluator = FlamingoEvalModel(model)
    assert evaluator.prompts == PROMPTS
    captions = load_task(TASKS_DIR / "world_captions.yaml")
    assert captions.with_prompts(evaluator.prompts).prompt == PROMPTS.caption
    assert captions.with_prompts(OPENFLAMINGO).prompt == OPENFLAMINGO.caption  # flamingo eval --prompts


def test_bad_templates_in_a_checkpoint_are_named(model_dir, tmp_path):
    import json

    from flamingo.model.config import FlamingoConfig

    path = _checkpoint_copy(model_dir, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["prompts"]["classify"]["query"] = "Output:"  # no {image}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"field 'prompts\.classify\.query': must contain \{image\} exactly once"
    ):
        FlamingoConfig.load(path / "config.json")
