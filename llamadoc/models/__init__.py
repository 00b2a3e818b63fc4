"""The Models seam: where a Reader's engines and guard come from (this machine, or a running `llamadoc serve`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llamadoc.models.base import Models, ModelSettings


def for_run(spec: ModelSettings, server: str | None, api_key: str | None,
            notify: Callable[[str], None] = lambda _m: None) -> Models:
    """This machine's models, or a running server's when one is named (--server, LLAMADOC_HOST):
    never a silent local load when a server was asked for. A server loads with its own options."""
    if server:
        from llamadoc.models.remote import ServerModels

        return ServerModels(server, spec.settings, spec.model, api_key, guard=spec.guard)
    from llamadoc.models.local import LocalModels

    return LocalModels(spec, notify)
