"""Model names -> verified local files, from Hugging Face, an Ollama registry or a local path.

    resolve(settings, name)      the files an engine loads, pulled first if asked
    locate / is_present          where each file is; reads the disk only
    pull / remove / verify       fetch what is missing; delete llamadoc's copies; check sha256
    gguf_summary                 what a GGUF file says about itself

Downloads land in $LLAMADOC_HOME/models: Hub files under huggingface/<owner>/<repo>/,
Ollama models in Ollama's own layout under ollama/. Files already in an Ollama
installation or in the Hugging Face cache are used where they are.
"""

from __future__ import annotations

from llamadoc.gguf_header import GgufSummary, gguf_architecture, gguf_summary
from llamadoc.registry.hashing import file_sha256, fresh_sha256
from llamadoc.registry.locate import LocalFile, is_present, locate
from llamadoc.registry.maintain import FileCheck, Removal, remove, verify
from llamadoc.registry.pull import pull, pull_files
from llamadoc.registry.resolve import ResolvedModel, looks_like_path, resolve, resolve_guard

__all__ = [
    "FileCheck",
    "GgufSummary",
    "LocalFile",
    "Removal",
    "ResolvedModel",
    "file_sha256",
    "fresh_sha256",
    "gguf_architecture",
    "gguf_summary",
    "is_present",
    "locate",
    "looks_like_path",
    "pull",
    "pull_files",
    "remove",
    "resolve",
    "resolve_guard",
    "verify",
]
