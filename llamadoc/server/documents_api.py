"""llamadoc's document routes: POST /v1/documents/{ask|describe|extract} with PDF or image uploads
and the CLI's options as form fields, answered with what the CLI prints for --format (json by
default: the result document, schema_version, pages, checks and verdicts).

The batch runs through Reader.run_batch on the server's shared engines and guard, so an
upload is read exactly as `llamadoc ask FILE` reads it; the exit code the CLI would have
given travels in the X-Llamadoc-Exit-Code header.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llamadoc.batch.options import RunOptions
from llamadoc.engines.base import Sampling
from llamadoc.errors import UsageError
from llamadoc.inputs.raster import RasterOptions
from llamadoc.inputs.sources import Source, printable
from llamadoc.outputs.render import FORMATS, for_stdout
from llamadoc.reader import Events, Reader
from llamadoc.results import DocumentResult
from llamadoc.server import bounds
from llamadoc.server.answer import POLL_S
from llamadoc.server.bounds import check_prompt
from llamadoc.server.failures import ApiError, shown
from llamadoc.server.resident import Batched, Resident
from llamadoc.tasks import Ask, Describe, Extract, Task
from llamadoc.tasks.schema import check_schema

MEDIA = {"json": "application/json", "jsonl": "application/x-ndjson", "md": "text/markdown", "text": "text/plain"}
FIELDS = {"file", "question", "all_pages", "schema", "embedded", "pages", "dpi", "max_pixels", "password",
          "max_tokens", "temperature", "seed", "format", "per_page"}


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise ApiError(400, f"{name} must be a form field, not a file")


def _number(form: FormData, name: str, kind: type[int] | type[float]) -> Any:
    value = _text(form, name)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, not {value!r}") from None


def _flag(form: FormData, name: str) -> bool:
    return (_text(form, name) or "false").lower() in ("1", "true", "yes", "on")


async def _schema(resident: Resident, form: FormData) -> tuple[dict[str, Any], str]:
    import yaml

    value = form.get("schema")
    if value is None:
        raise ApiError(400, "extract needs a schema (a JSON Schema, as JSON or YAML: a field or a file)")
    name = "the schema"
    if isinstance(value, UploadFile):
        name = f"schema {printable(value.filename or 'upload')}"
        raw = (await value.read()).decode("utf-8", errors="replace")
    else:
        raw = value
    check_prompt(resident, raw)  # parsed on the event loop: a schema is a few KiB, not megabytes
    try:
        schema = yaml.safe_load(raw)  # YAML 1.2 reads JSON as it is
    except (yaml.YAMLError, RecursionError) as err:
        raise ApiError(400, f"{name} does not parse: {str(err).splitlines()[0]}") from None
    return check_schema(schema, name), name


async def _task(resident: Resident, kind: str, form: FormData) -> Task:
    if kind == "ask":
        question = _text(form, "question")
        if not question:
            raise ApiError(400, "ask needs a question")
        check_prompt(resident, question)
        return Ask(question, all_pages=_flag(form, "all_pages"))
    if kind == "describe":
        return Describe()
    schema, name = await _schema(resident, form)
    return Extract(schema=schema, schema_path=name, embedded=_text(form, "embedded") or "prefer")


async def documents(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    kind = request.path_params["task"]
    if kind not in ("ask", "describe", "extract"):
        raise ApiError(404, f"no such task {shown(kind)}: use ask, describe or extract")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the documents as multipart/form-data, one 'file' field each")
    form = await request.form(max_files=resident.options.max_documents, max_fields=len(FIELDS) + 8)
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {shown(unknown[0])}", code=None)
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise ApiError(400, "no documents: send each as a 'file' field")
    fmt = _text(form, "format") or "json"
    if fmt not in FORMATS:
        raise ApiError(400, f"format must be one of {', '.join(FORMATS)}")
    task = await _task(resident, kind, form)
    limits = resident.options
    try:
        options = RunOptions(
            raster=RasterOptions(dpi=_number(form, "dpi", float), max_pixels=_number(form, "max_pixels", int),
                                 pages=_text(form, "pages"), password=_text(form, "password"),
                                 ceiling=limits.max_image_pixels, max_pages=limits.max_pages),
            max_tokens=min(_number(form, "max_tokens", int) or resident.options.max_tokens,
                           resident.options.max_tokens),
            sampling=Sampling(temperature=_number(form, "temperature", float) or 0.0,
                              seed=_number(form, "seed", int) or 0))
    except UsageError as err:  # said with the CLI's flags (--dpi): named as this form's fields (dpi)
        raise ApiError(400, re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), str(err))) from None
    sources = [Source(label=printable(Path(f.filename or f"upload-{i}").name), data=await f.read(),
                      rel=printable(Path(f.filename or f"upload-{i}").name)) for i, f in enumerate(files, 1)]
    per_page, several = _flag(form, "per_page"), len(sources) > 1
    out: list[DocumentResult] = []
    code = await _job(request, resident, task, sources, options, out)
    text = "".join(for_stdout(d, fmt, several, per_page) for d in out)
    return Response(text, media_type=MEDIA[fmt], headers={"X-Llamadoc-Exit-Code": str(code)})


class _Abandoned(Exception):
    """Raised inside a job whose client went away (or whose server is stopping): it ends the batch."""


async def _job(request: Request, resident: Resident, task: Task, sources: list[Source], options: RunOptions,
               out: list[DocumentResult]) -> int:
    """A document job on a worker thread, in its turn (at most bounds.JOBS at once: the rest wait
    without holding a thread). Its client is watched meanwhile: when it hangs up, or the server
    stops, the job's pages leave the engine's queue and the batch ends at its next page."""
    cancelled = threading.Event()
    reader = Reader(models=Batched(resident.models, resident.batcher, resident.needs, cancelled))

    def check(*_args: Any) -> None:
        if cancelled.is_set():
            raise _Abandoned

    def finished(doc: DocumentResult, _written: Any, _problems: Any) -> None:
        check()
        out.append(doc)

    def run() -> int:
        check()
        with resident.use():
            report = reader.run_batch(task, sources, options, events=Events(on_page=check, on_document=finished))
        return int(report.exit_code)

    job = asyncio.ensure_future(bounds.run("jobs", run))
    job.add_done_callback(lambda t: t.cancelled() or t.exception())  # an abandoned job's end is nobody's
    stopping = bounds.bounds(request).stopping
    while not job.done():
        await asyncio.wait({job}, timeout=POLL_S)
        if job.done():
            break
        if stopping.is_set() or await request.is_disconnected():
            cancelled.set()
            job.cancel()  # one still waiting for its turn never starts; a running one ends at its next page
            if stopping.is_set():
                raise ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
            raise ApiError(499, "the client went away")
    return job.result()


routes = [Route("/v1/documents/{task}", documents, methods=["POST"])]
