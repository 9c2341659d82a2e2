"""One sample check for training and validation: every unusable sample is counted under the same reason by
the trainer's loader, the shard readers and `flamingo data validate`, and none of them raises."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from data_support import flamingo_data, loader_source
from PIL import Image

from flamingo.data.loader import sample_settings
from flamingo.data.mmc4 import document_to_mmc4
from flamingo.data.schema import ImageInfo, InterleavedDocument
from flamingo.data.sft import SFT_FORMAT
from flamingo.data.shards import ReadStats, read_interleaved, read_pairs
from flamingo.data.synthetic import synthetic_document
from flamingo.data.usable import SampleSettings, check_sample
from flamingo.data.validate import validate_shards

FILLER = "one two three four five six seven eight nine ten"


def _png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _document(key: str, text_list: list[str], image_sentences: list[int]) -> list[tuple[str, bytes]]:
    """Members of one of our interleaved documents, its i-th image before sentence image_sentences[i]."""
    infos = [ImageInfo(f"{i}.png", sentence, 0.3) for i, sentence in enumerate(image_sentences)]
    data = InterleavedDocument(key, text_list, infos).to_dict()
    members = [(f"{key}.json", json.dumps(data).encode())]
    return members + [(f"{key}.{i}.png", _png()) for i in range(len(infos))]


def _good(key: str = "good") -> list[tuple[str, bytes]]:
    return _document(key, ["A red circle is shown here."], [0])


def _pair(
    key: str, json_value: object = None, caption: str | None = "a red circle"
) -> list[tuple[str, bytes]]:
    members = [(f"{key}.png", _png())]
    members += [(f"{key}.txt", caption.encode())] if caption is not None else []
    return members + ([(f"{key}.json", json.dumps(json_value).encode())] if json_value is not None else [])


def _validate(kind: str, path: Path, tokenizer=None):
    """`flamingo data validate` with the loader's settings of the source (the tokenizer too, when given)."""
    settings = sample_settings(loader_source(kind, path), tokenizer) if tokenizer else SampleSettings(kind)
    return validate_shards(path, settings=settings)


def test_mmc4_fields_of_the_wrong_type_are_counted_not_raised(
    tmp_path, write_tar, epoch_counts, tiny_tokenizer, capsys
) -> None:
    document = synthetic_document(random.Random(0), "doc", num_sentences=1, num_images=1, image_size=8)
    good = document_to_mmc4(document, embed_images=True)
    int_name = json.loads(json.dumps(good))
    int_name["image_info"][0]["image_name"] = 7
    samples = {"good": good, "ints": {**good, "image_info": 5}, "name": int_name}
    path = write_tar(
        tmp_path / "mmc4.tar", [(f"{k}.json", json.dumps(v).encode()) for k, v in samples.items()]
    )
    expected = {"bad_field_type:image_info": 1, "bad_field_type:image_info[].image_name": 1}
    read, left_out = epoch_counts("interleaved", path)
    assert read == expected and left_out == {}
    assert _validate("interleaved", path, tiny_tokenizer).skipped == expected
    report = validate_shards(path)  # the CLI's default: kind guessed, structure only
    assert report.skipped == expected and report.usable == 1 and not report.ok
    stats = ReadStats()
    assert [d.id for d in read_interleaved(path, stats=stats)] == ["good"] and stats.skipped == expected
    assert flamingo_data("validate", str(path)) == 1
    out = capsys.readouterr().out
    assert "field 'image_info': must be a list, got int (bad_field_type:image_info)" in out
    assert "image_info[0].image_name': must be a file name string, got int" in out


def test_pair_json_that_is_not_an_object_is_counted_by_both(tmp_path, write_tar, epoch_counts) -> None:
    members = _pair("good") + _pair("list", []) + _pair("text", "hello") + _pair("number", 5)
    members += [("null.png", _png()), ("null.txt", b"a caption"), ("null.json", b"null")]
    path = write_tar(tmp_path / "pairs.tar", members)
    read, _ = epoch_counts("pairs", path, max_tokens=16)
    assert read == {"not_an_object": 4}
    report = _validate("pairs", path)
    assert report.skipped == read and report.usable == 1 and report.pairs == 1
    assert {issue.key for issue in report.issues} == {"list", "text", "number", "null"}
    stats = ReadStats()
    assert [p.key for p in read_pairs(path, stats=stats)] == ["good"] and stats.skipped == read


def test_null_and_other_non_objects_are_counted_for_documents_and_conversations(
    tmp_path, write_tar, epoch_counts
) -> None:
    members = [*_good(), ("null.json", b"null"), ("list.json", b"[]"), ("deep.json", b"[" * 100_000)]
    members += [("big.json", b"9" * 5000)]  # more digits than Python turns into an int
    path = write_tar(tmp_path / "docs.tar", members)
    read, _ = epoch_counts("interleaved", path)
    assert read == {"not_an_object": 2, "bad_json": 2}
    assert _validate("interleaved", path).skipped == read
    conversation = {
        "format": SFT_FORMAT,
        "id": "c",
        "images": ["0.png"],
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": "A red circle."},
        ],
    }
    members = [("good.json", json.dumps(conversation).encode()), ("good.0.png", _png())]
    members += [("null.json", b"null"), ("null.0.png", _png())]
    members += [("ints.json", json.dumps({**conversation, "messages": 3}).encode())]
    path = write_tar(tmp_path / "sft.tar", members)
    read, _ = epoch_counts("sft", path, max_tokens=32)
    assert read == {"not_an_object": 1, "bad_field_type:messages": 1}
    assert _validate("sft", path).skipped == read


def test_image_markers_in_the_text_are_counted_wherever_they_sit(
    tmp_path, write_tar, epoch_counts, tiny_tokenizer
) -> None:
    early = _document("early", ["A red <image> circle is shown here.", "one two"], [0])
    late = _document("late", ["A red circle is shown here.", *[FILLER] * 4, "and <image> here"], [0])
    path = write_tar(tmp_path / "docs.tar", _good() + early + late)
    read, _ = epoch_counts("interleaved", path)  # "late"'s marker lies past max_tokens (24)
    assert read == {"image_marker_mismatch": 2}
    for report in (_validate("interleaved", path), _validate("interleaved", path, tiny_tokenizer)):
        assert report.skipped == read and not report.ok
        assert {(i.key, i.field) for i in report.issues} == {
            ("early", "text_list[0]"),
            ("late", "text_list[5]"),
        }
    path = write_tar(tmp_path / "pairs.tar", _pair("good") + _pair("marked", caption="a <image> circle"))
    read, _ = epoch_counts("pairs", path, max_tokens=16)
    assert read == {"image_marker_mismatch": 1}
    assert _validate("pairs", path).skipped == read


def test_text_truncated_past_its_images_is_counted_by_both(
    tmp_path, write_tar, epoch_counts, tiny_tokenizer
) -> None:
    lost = _document("lost", [*[FILLER] * 3, "A red circle is shown here."], [3])  # its only image is cut
    half = _document("half", ["A red circle is shown here.", *[FILLER] * 3, "one two"], [0, 4])  # one of two
    path = write_tar(tmp_path / "docs.tar", _good() + lost + half)
    read, left_out = epoch_counts("interleaved", path)
    assert read == {"image_past_truncation": 1} and left_out == {"image_past_truncation": 1}
    report = _validate("interleaved", path, tiny_tokenizer)
    assert report.skipped == read and report.left_out == left_out and report.usable == 2
    assert [(i.key, i.reason) for i in report.issues] == [("lost", "image_past_truncation")]
    assert _validate("interleaved", path).ok  # without the tokenizer the truncation is unknown
    settings = sample_settings(loader_source("interleaved", path, max_tokens=200), tiny_tokenizer)
    assert validate_shards(path, settings=settings).ok  # long enough for every image


def test_the_check_prepares_the_sequence_the_loader_trains_on(tmp_path, write_tar, tiny_tokenizer) -> None:
    members = dict(_document("doc", ["A red circle is shown here.", "one two", "A blue square."], [0, 2]))
    members = {name.split(".", 1)[1]: data for name, data in members.items()}
    settings = sample_settings(loader_source("interleaved", tmp_path), tiny_tokenizer)
    checked = check_sample("doc", members, settings)
    assert checked.usable and checked.problems == [] and checked.prepared is not None
    ids = checked.prepared.input_ids
    image_id, eoc_id = tiny_tokenizer.convert_tokens_to_ids(["<image>", "<|endofchunk|>"])
    assert ids.shape == (24,) and int((ids == image_id).sum()) == 2 == len(checked.prepared.images)
    assert tiny_tokenizer.decode(ids[checked.prepared.attention_mask.bool()]).startswith(
        "<image> A red circle"
    )
    labels = checked.prepared.labels
    assert (labels[ids == image_id] == -100).all() and (labels[ids == eoc_id] == eoc_id).all()
