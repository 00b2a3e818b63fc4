"""Continuous batching on one MllamaModel: a sequence joins the decoding batch at the next step.

``MllamaModel.generate_batch`` decodes a batch fixed at its start. A server's requests arrive
one by one, so here each new sequence is prefilled alone in a free cache row and then decodes
with the others, one graph per step (every step reads the weights once for all rows); a row is
freed the moment its sequence ends or is cancelled. Greedy tokens equal one-at-a-time decoding.
One thread drives a Scheduler; it holds no lock of its own.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llamadoc.errors import UsageError

from .model import BatchItem, Completion, MllamaModel, _Seq
from .sampling import Sampler

_UTF8 = codecs.getincrementaldecoder("utf-8")


@dataclass
class Running:
    """One sequence in the scheduler: its tokens so far, and how it ended."""

    item: BatchItem
    on_text: Callable[[str], None]  # decoded text as it grows (whole UTF-8 characters only)
    seq: _Seq
    sampler: Sampler
    tokens: list[int] = field(default_factory=list)
    next: int = -1  # sampled, to be fed at the next step
    finish: str | None = None  # "stop" | "length" | "cancelled" once it has ended
    timings_ms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _decoder: codecs.IncrementalDecoder = field(default_factory=lambda: _UTF8("replace"))


class Scheduler:
    """Rows of one model's caches, given to sequences as they come and freed as they end."""

    def __init__(self, model: MllamaModel, max_batch: int) -> None:
        self.model = model
        model.reserve(max_batch)
        self.rows: list[Running | None] = [None] * max_batch
        self.batch_sizes: list[int] = []  # sequences decoded together at each step, for tests and benchmarks
        self.encoded = 0  # images run through the vision encoder; the others came from its cache

    @property
    def free(self) -> int:
        return self.rows.count(None)

    @property
    def busy(self) -> bool:
        return self.free < len(self.rows)

    def add(self, item: BatchItem, on_text: Callable[[str], None] = lambda _t: None) -> Running:
        """Prefill a new sequence in a free row; it decodes with the others from the next step.
        A sequence that ends at once (its first token is an end token) never takes the row."""
        if item.max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, not {item.max_tokens}")
        row = self.rows.index(None)  # ValueError when full: the caller counts free rows
        seq, logits, timings, encoded = self.model.begin(row, item.image, item.prompt)
        self.encoded += encoded
        sampler = Sampler(self.model.tokenizer, self.model.n_vocab, item.temperature, item.top_p, item.seed,
                          item.grammar)
        running = Running(item, on_text, seq, sampler, timings_ms=timings)
        running.timings_ms["decode"] = 0.0
        if not self._accept(running, sampler.sample(logits)):
            self.rows[row] = running
        return running

    def step(self) -> list[Running]:
        """One decode step for every sequence under way; returns those that ended with it."""
        last = max((i for i, r in enumerate(self.rows) if r is not None), default=-1)
        if last < 0:
            return []
        rows = self.rows[: last + 1]
        started = time.perf_counter()
        logits = self.model.step([r.seq if r else None for r in rows],
                                 [r.next if r else self.model.tokenizer.eot for r in rows])
        elapsed = (time.perf_counter() - started) * 1e3
        self.batch_sizes.append(sum(r is not None for r in rows))
        ended = []
        for i, r in enumerate(rows):
            if r is None:
                continue
            r.timings_ms["decode"] += elapsed
            if self._accept(r, r.sampler.sample(logits[i])):
                self.rows[i] = None
                ended.append(r)
        return ended

    def completion(self, r: Running) -> Completion:
        """An ended sequence as generate_batch reports one."""
        return Completion(r.tokens, self.model.tokenizer.decode(r.tokens), r.finish or "length", len(r.item.prompt),
                          [], r.timings_ms, r.sampler.logprobs[: len(r.tokens)])

    def cancel(self, running: Running) -> None:
        """Free a sequence's row now (its client went away)."""
        if running.finish is None:
            self._end(running, "cancelled")
            self.rows[running.seq.row] = None

    def _accept(self, r: Running, token: int) -> bool:
        """Take a sampled token: True when the sequence ends with it."""
        if token in self.model.tokenizer.stop:
            return self._end(r, "stop")
        r.tokens.append(token)
        r.on_text(r._decoder.decode(self.model.tokenizer.piece(token)))
        if len(r.tokens) >= r.item.max_tokens or r.seq.n_past + 1 > self.model.n_ctx:
            return self._end(r, "length")
        r.next = token
        return False

    def _end(self, r: Running, reason: str) -> bool:
        r.finish = reason
        tail = r._decoder.decode(b"", final=True)
        if tail:
            r.on_text(tail)
        r.sampler.close()
        r.timings_ms["decode_steps"] = float(len(r.tokens))
        return True
