"""JSONL data files: the one reader of every JSONL file the project takes in (benchmark sets, questions,
responses to score, trajectories, step traces, keep labels), so that a bad line is always reported the
same way, by file and line; and the one writer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file and the line."""


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """One JSON object per line (folders created); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


class _BadLine(Exception):
    """What is wrong with one line; `read_jsonl` adds the file and the line number."""


def read_jsonl(path: str | Path, schema: type[BaseModel] | None = None, required: tuple[str, ...] = (),
               what: str = "a JSON object", *, check: Callable[[dict], None] | None = None,
               skip: Callable[[DataFileError], None] | None = None) -> list[dict[str, Any]]:
    """Every non-blank line of `path` as a dict: the parsed JSON, not the `schema` object.

    A line must be UTF-8 JSON holding an object (`what` names it in errors) with the `required` fields,
    valid against `schema` and accepted by `check` (which raises `ValueError` naming the problem).
    The first line that is not raises `DataFileError` naming the file and the line; given `skip`, each
    such error goes to `skip` instead and the line is left out."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    rows = []
    with open(path, "rb") as f:  # decoded line by line, so that bytes that are not UTF-8 get a line number
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(_row(line, schema, required, what, check))
            except _BadLine as err:
                error = DataFileError(f"{path}:{number}: {err}")
                if skip is None:
                    raise error from None
                skip(error)
    return rows


def _row(line: bytes, schema: type[BaseModel] | None, required: tuple[str, ...], what: str,
         check: Callable[[dict], None] | None) -> dict[str, Any]:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadLine("not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise _BadLine(f"malformed JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise _BadLine(f"not {what}")
    for name in required:
        if name not in row:
            raise _BadLine(f"missing field {name!r}")
    if schema is not None:
        try:
            schema.model_validate(row)
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(map(str, problem["loc"])) or "line"  # a model-level validator has no location
            raise _BadLine(f"not {what}: {where}: {problem['msg']}") from None
    if check is not None:
        try:
            check(row)
        except ValueError as err:
            raise _BadLine(str(err)) from None
    return row
