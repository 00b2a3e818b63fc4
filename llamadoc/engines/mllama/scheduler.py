"""Continuous batching on one MllamaModel: a sequence joins the decoding batch at the next step.

``MllamaModel.generate_batch`` decodes a batch fixed at its start. A server's requests arrive
one by one, so here each new sequence is prefilled alone in a free cache row and then decodes
with the others, one graph per step (every step reads the weights once for all rows); a row is
freed the moment its sequence ends or is cancelled. Greedy tokens equal one-at-a-time decoding.
One thread drives a Scheduler; it holds no lock of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llamadoc.engines.textstream import TextStream
from llamadoc.errors import UsageError

from .model import BatchItem, Completion, MllamaModel, _Seq
from .sampling import Sampler


@dataclass
class Running:
    """One sequence in the scheduler: its tokens so far, and how it ended."""

    item: BatchItem
    # Decoded text as it grows (whole UTF-8 characters, never a stop text), at every step;
    # returning False ends the sequence there ("cancelled": its client went away).
    on_text: Callable[[str], object]
    seq: _Seq
    sampler: Sampler
    tokens: list[int] = field(default_factory=list)
    next: int = -1  # sampled, to be fed at the next step
    finish: str | None = None  # "stop" | "length" | "cancelled" once it has ended
    timings_ms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    text: TextStream = field(default_factory=TextStream)


@dataclass
class Kept:
    """What a free row's self-attention cache still holds from the sequence that ended in it: a
    conversation's next turn, which starts with those tokens (and the same image), continues there."""

    tokens: list[int]  # position by position
    image: str | None  # the image's key (MllamaModel.image_key)
    ended: float = field(default_factory=time.perf_counter)


class Scheduler:
    """Rows of one model's caches, given to sequences as they come and freed as they end."""

    def __init__(self, model: MllamaModel, max_batch: int) -> None:
        self.model = model
        model.reserve(max_batch)
        self.rows: list[Running | None] = [None] * max_batch
        self.kept: list[Kept | None] = [None] * max_batch
        self.batch_sizes: list[int] = []  # sequences decoded together at each step, for tests and benchmarks
        self.encoded = 0  # images run through the vision encoder; the others came from its cache
        self.reused = 0  # prompt tokens found in a row's cache rather than prefilled

    @property
    def free(self) -> int:
        return self.rows.count(None)

    @property
    def busy(self) -> bool:
        return self.free < len(self.rows)

    def add(self, item: BatchItem, on_text: Callable[[str], object] = lambda _t: None) -> Running:
        """Prefill a new sequence in a free row; it decodes with the others from the next step.
        A sequence that ends at once (its first token is an end token) never takes the row."""
        if item.max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, not {item.max_tokens}")
        row, keep = self._row_for(item)
        self.kept[row] = None  # rewritten from here on
        seq, logits, timings, encoded = self.model.begin(row, item.image, item.prompt, keep)
        self.encoded += encoded
        self.reused += keep
        timings["prompt_reused"] = float(keep)
        sampler = Sampler(self.model.tokenizer, self.model.n_vocab, item.temperature, item.top_p, item.seed,
                          item.grammar)
        running = Running(item, on_text, seq, sampler, timings_ms=timings, text=TextStream(item.stop))
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
        # A free row writes its filler token just past what it keeps, so a kept turn survives.
        idle_at = [len(k.tokens) if k is not None and len(k.tokens) < self.model.n_ctx else 0 for k in self.kept]
        logits = self.model.step([r.seq if r else None for r in rows],
                                 [r.next if r else self.model.tokenizer.eot for r in rows], idle_at)
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
        return Completion(r.tokens, r.text.text, r.finish or "length", len(r.item.prompt), [], r.timings_ms,
                          r.sampler.logprobs[: len(r.tokens)])

    def _row_for(self, item: BatchItem) -> tuple[int, int]:
        """A free row for a new sequence, and how many of its prompt tokens that row's cache holds
        already: the row of an earlier turn of its conversation when one is kept; else the first
        free row that keeps nothing, or the one kept longest. (Another client's one-off request,
        such as a chat UI's title, then leaves a conversation's row alone; an idle row in the
        batch costs little, as each step reads the weights once for all rows.)"""
        free = [i for i, r in enumerate(self.rows) if r is None]
        if not free:
            raise ValueError("no free row")  # the caller counts free rows
        image = self.model.image_key(item.image) if item.image is not None else None
        best, keep = None, 0
        for i in free:
            k = self.kept[i]
            if k is None or k.image != image:
                continue
            n = 0
            for a, b in zip(k.tokens, item.prompt[: len(item.prompt) - 1], strict=False):
                if a != b:
                    break
                n += 1
            if n > keep:
                best, keep = i, n
        if best is not None:
            return best, keep
        empty = [i for i in free if self.kept[i] is None]
        return (empty[0] if empty else min(free, key=lambda i: self.kept[i].ended)), 0  # type: ignore[union-attr]

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
        if r.on_text(r.text.feed(self.model.tokenizer.piece(token))) is False:
            return self._end(r, "cancelled")
        if r.text.stopped:
            return self._end(r, "stop")
        if len(r.tokens) >= r.item.max_tokens or r.seq.n_past + 1 > self.model.n_ctx:
            return self._end(r, "length")
        r.next = token
        return False

    def _end(self, r: Running, reason: str) -> bool:
        r.finish = reason
        if reason != "cancelled":  # the row's cache holds the prompt and the tokens fed after it
            held = [*r.item.prompt, *r.tokens][: r.seq.n_past]
            image = self.model.image_key(r.item.image) if r.item.image is not None else None
            self.kept[r.seq.row] = Kept(held, image)
        tail = r.text.finish() if reason != "cancelled" else ""
        if tail:
            r.on_text(tail)
        r.sampler.close()
        r.timings_ms["decode_steps"] = float(len(r.tokens))
        return True
