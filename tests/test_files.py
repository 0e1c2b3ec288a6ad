"""`read_jsonl`, the one JSONL reader: rows as parsed JSON, and every bad line named by file and line number."""
import json
from typing import Literal

import pytest
from pydantic import BaseModel

from tasks.files import DataFileError, read_jsonl


class Row(BaseModel):
    question: str
    mode: Literal["fold", "unfold"]


GOOD = {"question": "q", "mode": "fold", "extra": [1, 2]}


def write(tmp_path, *lines: str | bytes):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def error(path, **kwargs) -> str:
    with pytest.raises(DataFileError) as caught:
        read_jsonl(path, **kwargs)
    return str(caught.value)


def test_every_non_blank_line_as_the_parsed_json(tmp_path):
    path = write(tmp_path, json.dumps(GOOD), "", "   ", json.dumps({"question": "ü", "mode": "unfold"}))
    rows = read_jsonl(path, Row, required=("question",))
    assert rows == [GOOD, {"question": "ü", "mode": "unfold"}]  # dicts, extra fields kept
    assert all(type(row) is dict for row in rows)
    assert read_jsonl(write(tmp_path, "", "")) == []


def test_a_missing_file(tmp_path):
    assert error(tmp_path / "nowhere.jsonl") == f"{tmp_path / 'nowhere.jsonl'}: file not found"
    assert error(tmp_path) == f"{tmp_path}: file not found"  # a folder is not a data file


@pytest.mark.parametrize("bad, message", [
    (b"\xff\xfe", "not UTF-8 text"),
    ('{"question": ', "malformed JSON (Expecting value)"),
    ("[1, 2]", "not a JSON object"),
    ('"text"', "not a JSON object"),
])
def test_a_bad_line_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path, json.dumps(GOOD), "", bad, json.dumps(GOOD))
    assert error(path) == f"{path}:3: {message}"


def test_what_names_the_expected_object(tmp_path):
    path = write(tmp_path, "[1]")
    assert error(path, what="a question") == f"{path}:1: not a question"


def test_a_missing_required_field(tmp_path):
    path = write(tmp_path, json.dumps(GOOD), json.dumps({"mode": "fold"}))
    assert error(path, required=("question", "mode")) == f"{path}:2: missing field 'question'"
    assert error(path, required=("mode", "answer")) == f"{path}:1: missing field 'answer'"


@pytest.mark.parametrize("row, problem", [
    ({"mode": "fold"}, "question: Field required"),
    ({"question": "q", "mode": "both"}, "mode: Input should be 'fold' or 'unfold'"),
    ({"question": 3, "mode": "fold"}, "question: Input should be a valid string"),
])
def test_schema_validation_names_the_field(tmp_path, row, problem):
    path = write(tmp_path, json.dumps(GOOD), json.dumps(row))
    assert error(path, schema=Row, what="a row") == f"{path}:2: not a row: {problem}"


def test_a_nested_error_location_is_dotted(tmp_path):
    class Outer(BaseModel):
        rows: list[Row]

    path = write(tmp_path, json.dumps({"rows": [GOOD, {"question": "q", "mode": "x"}]}))
    assert error(path, schema=Outer).startswith(f"{path}:1: not a JSON object: rows.1.mode: Input should be")


def test_check_rejects_a_line_with_its_message(tmp_path):
    def check(row):
        if row["mode"] != "fold":
            raise ValueError("mode: not fold")

    path = write(tmp_path, json.dumps(GOOD), json.dumps({"question": "q", "mode": "unfold"}))
    assert error(path, check=check) == f"{path}:2: mode: not fold"


def test_skip_reports_each_bad_line_and_keeps_the_rest(tmp_path):
    path = write(tmp_path, json.dumps(GOOD), "{oops", b"\xff", "", "[]", json.dumps({"mode": "fold"}),
                 json.dumps({"question": "r", "mode": "unfold"}))
    skipped: list[DataFileError] = []
    rows = read_jsonl(path, Row, skip=skipped.append)
    assert rows == [GOOD, {"question": "r", "mode": "unfold"}]
    assert [str(err).split(": ", 1)[0] for err in skipped] == [f"{path}:{n}" for n in (2, 3, 5, 6)]
    assert all(isinstance(err, DataFileError) for err in skipped)
