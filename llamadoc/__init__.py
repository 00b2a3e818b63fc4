"""llamadoc: read documents with local vision models on llama.cpp's engine.

The public API, for ``from llamadoc import ...``: the Reader and what its batches take and
give. Each name loads its module on first use, so that ``import llamadoc`` and
``llamadoc --help`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from llamadoc.batch.options import RunOptions
    from llamadoc.config import Settings, load_settings
    from llamadoc.errors import (
        ClusterError,
        ConfigError,
        DocumentError,
        DownloadError,
        EngineError,
        ExitCode,
        GuardError,
        LlamadocError,
        ModelError,
        OutputError,
        PageError,
        ResourceError,
        UsageError,
        WriteFailed,
    )
    from llamadoc.guard import GuardPolicy
    from llamadoc.inputs.raster import RasterOptions
    from llamadoc.inputs.sources import Shard, Source
    from llamadoc.models.base import Models, ModelSettings
    from llamadoc.models.local import LocalModels
    from llamadoc.models.remote import ServerModels
    from llamadoc.outputs.report import Report
    from llamadoc.outputs.writer import OutputSpec
    from llamadoc.reader import Events, Reader, Selection
    from llamadoc.results import Check, DocumentResult, ModelInfo, PageResult, Status, Verdict
    from llamadoc.tasks import Ask, Describe, Extract, Task, load_schema

_WHERE = {
    "llamadoc.reader": ("Reader", "Events", "Selection"),
    "llamadoc.tasks": ("Ask", "Describe", "Extract", "Task", "load_schema"),
    "llamadoc.batch.options": ("RunOptions",),
    "llamadoc.inputs.raster": ("RasterOptions",),
    "llamadoc.inputs.sources": ("Shard", "Source"),
    "llamadoc.outputs.writer": ("OutputSpec",),
    "llamadoc.outputs.report": ("Report",),
    "llamadoc.guard": ("GuardPolicy",),
    "llamadoc.models.base": ("Models", "ModelSettings"),
    "llamadoc.models.local": ("LocalModels",),
    "llamadoc.models.remote": ("ServerModels",),
    "llamadoc.config": ("Settings", "load_settings"),
    "llamadoc.results": ("DocumentResult", "PageResult", "ModelInfo", "Check", "Verdict", "Status"),
    "llamadoc.errors": ("LlamadocError", "UsageError", "ConfigError", "ModelError", "OutputError", "ResourceError",
                        "GuardError", "DownloadError", "DocumentError", "PageError", "EngineError", "ClusterError",
                        "WriteFailed", "ExitCode"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = [
    "Ask", "Check", "ClusterError", "ConfigError", "Describe", "DocumentError", "DocumentResult", "DownloadError",
    "EngineError", "Events", "ExitCode", "Extract", "GuardError", "GuardPolicy", "LlamadocError", "LocalModels",
    "ModelError", "ModelInfo", "ModelSettings", "Models", "OutputError", "OutputSpec", "PageError", "PageResult",
    "RasterOptions", "Reader", "Report", "ResourceError", "RunOptions", "Selection", "ServerModels", "Settings",
    "Shard", "Source", "Status", "Task", "UsageError", "Verdict", "WriteFailed", "load_schema", "load_settings",
]


def __getattr__(name: str) -> Any:
    if name in _MODULE:
        import importlib

        return getattr(importlib.import_module(_MODULE[name]), name)
    raise AttributeError(f"module 'llamadoc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
