"""llamadoc: read documents with local vision models on llama.cpp's engine.

The public API is loaded on first use, so that ``llamadoc --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Reader", "DocumentResult", "PageResult", "Status", "LlamadocError", "load_settings"]

if TYPE_CHECKING:
    from llamadoc.config import load_settings
    from llamadoc.errors import LlamadocError
    from llamadoc.reader import Reader
    from llamadoc.results import DocumentResult, PageResult, Status

_WHERE = {
    "Reader": "llamadoc.reader",
    "DocumentResult": "llamadoc.results",
    "PageResult": "llamadoc.results",
    "Status": "llamadoc.results",
    "LlamadocError": "llamadoc.errors",
    "load_settings": "llamadoc.config",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'llamadoc' has no attribute {name!r}")
