"""A scripted engine for pipeline logic that a random-weight model cannot exercise
(a right answer on one page, a wrong one on another). Real-engine runs live in the
CLI tests; this stand-in only answers what it is told to."""

from __future__ import annotations

from collections.abc import Callable

from llamadoc.engines.base import GenerationRequest, GenerationResponse


class ScriptedEngine:
    name = "scripted"
    max_images = 1
    supports_schema = True
    gpu_layers = 0
    device = "CPU"

    def __init__(self, answer: Callable[[GenerationRequest, int], str]) -> None:
        self.answer = answer
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self.requests.append(request)
        text = self.answer(request, len(self.requests))
        return GenerationResponse(text=text, prompt_tokens=10, completion_tokens=len(text.split()))

    def close(self) -> None:
        pass
