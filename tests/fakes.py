"""A scripted engine for pipeline logic that a random-weight model cannot exercise
(a right answer on one page, a wrong one on another). Real-engine runs live in the
CLI tests; this stand-in only answers what it is told to."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llamadoc.engines.base import GenerationRequest, GenerationResponse, GuardOutput


class ScriptedEngine:
    name = "scripted"
    max_images = 1
    max_batch = 1
    supports_schema = True
    gpu_layers = 0
    device = "CPU"

    def __init__(self, answer: Callable[[GenerationRequest, int], str]) -> None:
        self.answer = answer
        self.requests: list[GenerationRequest] = []
        self.batches: list[int] = []

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self.requests.append(request)
        text = self.answer(request, len(self.requests))
        return GenerationResponse(text=text, prompt_tokens=10, completion_tokens=len(text.split()))

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        self.batches.append(len(requests))
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass


class ScriptedGuard:
    """A guard engine that says what a rule tells it to, for forcing verdicts."""

    sees_images = False
    n_ctx = 4096

    def __init__(self, rule: Callable[[str], tuple[str, float]], model_name: str = "scripted-guard") -> None:
        self.rule = rule
        self.model_name = model_name
        self.prompts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def split(self, text: str, max_tokens: int) -> list[str]:
        words = text.split()
        return [" ".join(words[i : i + max_tokens]) for i in range(0, len(words), max_tokens)]

    def judge(self, prompt: str, image: object = None) -> GuardOutput:
        self.prompts.append(prompt)
        text, p_unsafe = self.rule(prompt.split("<BEGIN CONVERSATION>")[1])
        return GuardOutput(text=text, p_unsafe=p_unsafe)

    def close(self) -> None:
        pass
