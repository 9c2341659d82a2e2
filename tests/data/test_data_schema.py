"""The interleaved-document schema: JSON round trip and errors that name the field and the fix."""

from __future__ import annotations

import pytest

from flamingo.data.schema import FORMAT, InterleavedDocument, SchemaError, check_document_dict
from flamingo.data.synthetic import synthetic_documents


def test_json_round_trip() -> None:
    document = synthetic_documents(1, seed=1)[0]
    data = document.to_dict()
    assert data["format"] == FORMAT and set(data) == {
        "format",
        "id",
        "url",
        "text_list",
        "image_info",
        "similarity_matrix",
        "source",
    }
    assert InterleavedDocument.from_dict(data) == document


def test_errors_name_the_source_key_field_and_fix() -> None:
    data = synthetic_documents(1, seed=1)[0].to_dict()
    data["similarity_matrix"] = [[0.1]] * len(data["image_info"])
    with pytest.raises(SchemaError) as raised:
        InterleavedDocument.from_dict(data, source="shard-000003.tar", key="doc7")
    message = str(raised.value)
    assert message.startswith("shard-000003.tar [doc7]: field 'similarity_matrix[0]'") and "Fix:" in message
    assert raised.value.issue.field == "similarity_matrix[0]"


def test_every_problem_is_collected() -> None:
    data = {
        "format": "other/2",
        "id": "",
        "text_list": ["one", 2],
        "image_info": [{"member": "0.gif", "matched_text_index": "0", "width": -1}],
    }
    fields = [issue.field for issue in check_document_dict(data)]
    assert fields == [
        "format",
        "id",
        "text_list",
        "image_info[0].member",
        "image_info[0].matched_text_index",
        "image_info[0].width",
    ]
    assert check_document_dict([1, 2])[0].field == "<root>"
