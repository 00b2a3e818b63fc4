"""The jobs: ask (a question), describe (Markdown), extract (JSON fields under a schema).

A task turns a page into a prompt, reads the model's reply, and folds the page
replies of one document into the document's answer. It never calls an engine
itself: the pipeline does, so retries and guards stay in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamadoc.errors import UsageError

NOT_FOUND = "NOT ON THIS PAGE"
_WORD = re.compile(r"[^\W\d_]{4,}", re.UNICODE)
_STOPWORDS = frozenset(
    "what which when where whose with that this there these those from have does your about into "
    "than then them they their were been being will would could should much many more most some "
    "page document show shows tell give list value values".split()
)


@dataclass(frozen=True)
class PageReply:
    """What a task made of one page's model output."""

    answer: str | None = None
    fields: dict[str, Any] | None = None
    error: str | None = None  # the reply did not do what the task asked (e.g. schema)
    found: bool = True  # ask: False when the page said it holds no answer


class Ask:
    name = "ask"

    def __init__(self, question: str) -> None:
        if not question.strip():
            raise UsageError("the question is empty", hint='pass one with -q "..."')
        self.question = question.strip()
        self.schema: dict[str, Any] | None = None

    def options(self) -> dict[str, Any]:
        return {"question": self.question}

    def prompt(self, page_count: int) -> str:
        if page_count == 1:
            return (
                "Answer the question about this document using only what it shows. "
                "Be concise and exact; quote numbers as printed.\n\n"
                f"Question: {self.question}"
            )
        return (
            "This image is one page of a longer document. Answer the question using only "
            "what this page shows. Be concise and exact; quote numbers as printed. If this "
            f"page does not answer it, reply exactly: {NOT_FOUND}\n\nQuestion: {self.question}"
        )

    def read(self, text: str) -> PageReply:
        answer = text.strip()
        found = bool(answer) and NOT_FOUND.lower() not in answer.lower()[: len(NOT_FOUND) + 8]
        return PageReply(answer=answer, found=found)

    def relevant(self, text: str | None, graphics: bool) -> bool:
        """False only when the text layer shows the page cannot matter: all text,
        no pictures, and not one content word of the question on it."""
        if text is None or graphics or len(text) < 200:
            return True
        words = {w.lower() for w in _WORD.findall(self.question)} - _STOPWORDS
        if not words:
            return True
        page_words = {w.lower() for w in _WORD.findall(text)}
        return bool(words & page_words)

    def combine_prompt(self, answers: Sequence[tuple[int, str]]) -> str:
        listed = "\n".join(f"[page {i}] {a}" for i, a in answers)
        return (
            "Several pages of one document each answered the same question. Combine their "
            "answers into one answer to the question. Cite the pages you rely on as "
            "(page N). Use only the information below.\n\n"
            f"Question: {self.question}\n\nPage answers:\n{listed}"
        )


class Describe:
    name = "describe"
    schema: dict[str, Any] | None = None

    def options(self) -> dict[str, Any]:
        return {}

    def prompt(self, page_count: int) -> str:
        return (
            "Transcribe this document page into Markdown, faithfully and completely, in reading "
            "order. Keep headings as Markdown headings, lists as lists, and tables as Markdown "
            "tables. Describe each figure or chart briefly in one italic sentence. Do not "
            "summarise, explain or add anything that is not on the page. Output only the Markdown."
        )

    def read(self, text: str) -> PageReply:
        return PageReply(answer=_strip_fence(text.strip(), "markdown"))


@dataclass
class Extract:
    schema: dict[str, Any]
    schema_path: str = ""
    name: str = field(default="extract", init=False)

    def options(self) -> dict[str, Any]:
        canonical = json.dumps(self.schema, sort_keys=True, separators=(",", ":"))
        return {"schema": self.schema_path, "schema_sha256": hashlib.sha256(canonical.encode()).hexdigest()}

    def prompt(self, page_count: int, previous_error: str | None = None) -> str:
        where = "this document page" if page_count > 1 else "this document"
        text = (
            f"Extract the fields described by the JSON Schema below from {where}. Use only "
            "values printed on it; copy identifiers, amounts and dates exactly as printed; "
            "use null for a field that is not there. Answer with one JSON object only.\n\n"
            f"JSON Schema:\n{json.dumps(self.schema, indent=1)}"
        )
        if previous_error:
            text += (
                "\n\nYour previous answer did not match the schema: "
                f"{previous_error}\nAnswer again with JSON that matches it."
            )
        return text

    def read(self, text: str) -> PageReply:
        body = _strip_fence(text.strip(), "json")
        try:
            fields = json.loads(body)
        except json.JSONDecodeError as err:
            return PageReply(error=f"the reply is not JSON ({err.msg} at char {err.pos})")
        if not isinstance(fields, dict):
            return PageReply(error="the reply is JSON but not an object")
        problem = schema_error(fields, self.schema)
        return PageReply(fields=fields, error=problem)


def schema_error(instance: Any, schema: dict[str, Any]) -> str | None:
    """The first validation error as one line, or None when the instance is valid."""
    import jsonschema  # imported here: only extract needs it

    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    err = errors[0]
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    return f"{where}: {err.message}"


def load_schema(path: str) -> dict[str, Any]:
    """A JSON Schema from a .json file, or a YAML file that is one; checked before use."""
    import jsonschema
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"schema file {path} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        schema = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0]
        raise UsageError(f"schema file {path} does not parse: {first}") from None
    if not isinstance(schema, dict):
        raise UsageError(f"schema file {path} must hold a JSON Schema object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise UsageError(f"schema file {path} is not a valid JSON Schema: {err.message}") from None
    if schema.get("type", "object") != "object":
        raise UsageError(f"schema file {path} must describe an object (type: object)")
    return schema


def merge_fields(pages: Sequence[tuple[int, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, int]]:
    """One record from page records: a field takes the first page that has it (totals are
    often on the last page, ids on the first); lists from every page are joined."""
    merged: dict[str, Any] = {}
    origin: dict[str, int] = {}
    for index, fields in pages:
        for key, value in fields.items():
            if _empty(value):
                merged.setdefault(key, value)
                continue
            if isinstance(value, list) and isinstance(merged.get(key), list) and key in origin:
                merged[key] = merged[key] + value
            elif key not in origin:
                merged[key] = value
                origin[key] = index
    return merged, origin


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _strip_fence(text: str, lang: str) -> str:
    """Models sometimes wrap output in ``` fences; the content is what counts."""
    match = re.fullmatch(rf"```(?:{lang})?\s*\n(.*?)\n?```", text, re.DOTALL | re.IGNORECASE)
    return match.group(1).strip() if match else text


Task = Ask | Describe | Extract
