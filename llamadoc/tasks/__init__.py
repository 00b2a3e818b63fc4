"""The jobs: ask (a question), describe (Markdown), extract (JSON fields under a schema).

Each task owns its logic behind the protocol in base.py; the pipeline only sequences
the stages and never asks which task it runs.
"""

from __future__ import annotations

from llamadoc.results import DocumentResult
from llamadoc.tasks.ask import NOT_FOUND, Ask
from llamadoc.tasks.base import FollowUp, FollowUpAnswer, PageReply, Plan, Task
from llamadoc.tasks.describe import Describe
from llamadoc.tasks.extract import EMBEDDED_MODES, Extract, merge_fields
from llamadoc.tasks.schema import load_schema, schema_error

TASKS: dict[str, type[Ask] | type[Describe] | type[Extract]] = {"ask": Ask, "describe": Describe, "extract": Extract}

__all__ = [
    "EMBEDDED_MODES", "NOT_FOUND", "TASKS", "Ask", "Describe", "Extract", "FollowUp", "FollowUpAnswer", "PageReply",
    "Plan", "Task", "load_schema", "main_text", "markdown", "merge_fields", "schema_error",
]


def main_text(doc: DocumentResult) -> str:
    """A result's main output as plain text, by the task that made it (results may come from the store)."""
    task = TASKS.get(doc.task)
    return task.main_text(doc) if task is not None else ""


def markdown(doc: DocumentResult) -> str:
    task = TASKS.get(doc.task)
    return task.markdown(doc) if task is not None else ""
