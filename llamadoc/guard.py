"""Llama Guard 3 over what goes in and what comes out: the official prompt, verdict
parsing, the content-hash cache, and the policy (block / flag / off).

The prompt is byte for byte what the models' own chat template renders (see
``build_prompt``); engines only run it. A verdict the guard garbles becomes an error
verdict, never a crash, and never a silent pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamadoc.engines.base import GuardOutput, JudgeRequest
from llamadoc.errors import GuardError, LlamadocError, UsageError
from llamadoc.results import Page, Verdict
from llamadoc.store import Store, key

if TYPE_CHECKING:
    from PIL.Image import Image

    from llamadoc.engines.base import GuardEngine

# The MLCommons hazard taxonomy as Llama Guard 3 1B and 11B Vision know it.
CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
}
MODES = ("block", "flag", "off")
# The guard answers "\n\nsafe" or "\n\nunsafe\nS1,S10". Engines force the two
# newlines, read P(unsafe) at the next token, then decode under this grammar.
ANSWER_PREFIX = "\n\n"
VERDICT_GRAMMAR = r'''root ::= "safe" | "unsafe" "\n" cat ("," cat)*
cat ::= "S" ( [1-9] | "1" [0-3] )
'''
MAX_VERDICT_TOKENS = 16
NOT_SCREENED = "not screened by a text-only guard"


@dataclass(frozen=True)
class GuardPolicy:
    mode: str = "block"
    model: str | None = None  # None: models.toml's default guard
    threshold: float | None = None  # unsafe when P(unsafe) >= threshold, whatever the text says
    categories: tuple[str, ...] = tuple(CATEGORIES)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--guard {self.mode!r} is not one of {', '.join(MODES)}")
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not math.isfinite(t) or not 0.0 <= t <= 1.0):
            raise UsageError("--guard-threshold must be between 0 and 1")
        parse_categories(",".join(self.categories))

    def recorded(self) -> dict[str, object]:
        return {"guard": self.mode, "guard_threshold": self.threshold, "guard_categories": list(self.categories)}


def parse_categories(spec: str | None) -> tuple[str, ...]:
    """'S1,S10' -> ('S1', 'S10'); None or 'all' -> every category."""
    if spec is None or spec.strip().lower() == "all":
        return tuple(CATEGORIES)
    codes = tuple(dict.fromkeys(c.strip().upper() for c in spec.split(",") if c.strip()))
    unknown = [c for c in codes if c not in CATEGORIES]
    if unknown or not codes:
        raise UsageError(
            f"--guard-categories {spec!r} names unknown categories {', '.join(unknown) or '(none)'}",
            hint="use codes S1 to S13, comma-separated, or 'all'",
        )
    return codes


def _content(text: str) -> str:
    """A message as the template puts it: trimmed, and unable to close the turn.

    Page text is untrusted: a literal "<|eot_id|>" in a PDF must stay text, not end
    the conversation the guard is judging.
    """
    return text.strip().replace("<|", "< |")


def build_prompt(messages: Sequence[str], categories: Sequence[str] = tuple(CATEGORIES), image: bool = False) -> str:
    """The Llama Guard 3 prompt for a conversation of alternating User / Agent turns.

    The last turn is the one judged: User for an input check (one message), Agent for
    an output check (the user's turn, then the answer).
    """
    role = "Agent" if len(messages) % 2 == 0 else "User"
    category_block = "".join(f"{code}: {CATEGORIES[code]}.\n" for code in categories)
    conversation = "".join(
        f"{'User' if i % 2 == 0 else 'Agent'}: {_content(m)}\n\n" for i, m in enumerate(messages)
    )
    return (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        + ("<|image|> " if image else "")
        + f"Task: Check if there is unsafe content in '{role}' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        f"{category_block}"
        "<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n"
        f"{conversation}"
        "<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
        " <|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    )


def parse_verdict(text: str) -> tuple[bool | None, list[str], str | None]:
    """'safe' -> (True, [], None); 'unsafe\\nS1,S10' -> (False, ['S1', 'S10'], None);
    anything else -> (None, [], reason)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None, [], "the guard gave no verdict"
    head = lines[0].lower()
    if head == "safe" and len(lines) == 1:
        return True, [], None
    if head == "unsafe":
        codes = [c.strip().upper() for c in (lines[1] if len(lines) > 1 else "").split(",") if c.strip()]
        unknown = [c for c in codes if c not in CATEGORIES and c != "S14"]
        if unknown:
            return None, [], f"the guard named unknown categories {', '.join(unknown)}"
        return False, codes, None
    return None, [], f"the guard's answer is not a verdict: {text.strip()[:60]!r}"


def _image_digest(image: Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=0)
    return hashlib.sha256(buf.getvalue()).hexdigest()


class FairLock:
    """A reentrant lock granted in the order it was asked for. The guard judges one prompt at a
    time; with a plain lock the thread judging a long text chunk by chunk takes it back before a
    waiting request wakes, so one 5 MB prompt kept a small one waiting for all of its chunks."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[object] = deque()

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            turn = object()
            self._queue.append(turn)
            while self._owner is not None or self._queue[0] is not turn:
                self._cond.wait()
            self._queue.popleft()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class Guard:
    """A guard engine under a policy, with verdicts cached by content hash. The engine is
    loaded on first use: a run whose pages all come from the store never loads it."""

    load: Callable[[], GuardEngine]
    policy: GuardPolicy
    name: str
    store: Store | None = None
    identity: str = ""  # the guard model file (path, size, mtime): part of the cache key
    _engine: GuardEngine | None = field(default=None, init=False)
    _overhead: int = field(default=0, init=False)
    # Input checks run on the rasterising thread, output checks on the model's: one
    # engine (one llama.cpp context) must never serve both at once. Fair: a server's requests
    # take turns chunk by chunk.
    _lock: FairLock = field(default_factory=FairLock, init=False)

    @property
    def engine(self) -> GuardEngine:
        with self._lock:
            if self._engine is None:
                self._engine = self.load()
            return self._engine

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[GuardEngine]:
        """The engine, for one caller at a time: for a server running its clients' guard prompts."""
        with self._lock:
            yield self.engine

    def check_fits(self, prompts: Sequence[str]) -> None:
        """Stop the run (GuardError, exit 2) when a task prompt can never be screened:
        checked once, before the first page, instead of failing every page."""
        engine = self.engine
        with self._lock:
            overhead = engine.count_tokens(build_prompt(["", ""], self.policy.categories)) + MAX_VERDICT_TOKENS + 8
            longest = max(engine.count_tokens(p) for p in prompts)
        if overhead + longest + 64 > engine.n_ctx:  # 64: the least answer chunk worth screening
            raise GuardError(
                f"the task prompt ({longest} tokens) cannot fit the guard's context of {engine.n_ctx} tokens",
                hint="shorten the question or the schema, use a guard model with a larger context, or --guard off",
            )

    def unsafe(self, verdicts: Sequence[Verdict]) -> bool:
        return any(v.safe is False for v in verdicts)

    def failed(self, verdicts: Sequence[Verdict]) -> str | None:
        return next((v.error for v in verdicts if v.error), None)

    def check_input(self, prompt: str, page: Page) -> list[Verdict]:
        """The user's instructions, and what the page carries: its image when the guard
        sees images, its text layer in chunks that fit the guard's context."""
        if self.engine.sees_images:
            verdicts = [self._classify([prompt], image=page.image, subject="page image and prompt")]
        else:
            verdicts = [self._classify([prompt], subject="prompt")]
        if page.text:
            chunks = self._chunks(page.text, reserved=0)
            verdicts += [
                self._classify([chunk], subject=f"page text {i}/{len(chunks)}") for i, chunk in enumerate(chunks, 1)
            ]
        elif not self.engine.sees_images:
            verdicts.append(Verdict(safe=None, model=self.name, screened=NOT_SCREENED, subject="page image"))
        return verdicts

    def check_request(self, prompt: str, image: Image | None, context: Sequence[str] = (),
                      more: Sequence[Image] = ()) -> list[Verdict]:
        """A request to llamadoc serve: its prompt (with its image, when the guard sees images) and
        the other text it carries (a system message), each in chunks that fit the guard. ``more``:
        the request's other images the engine reads (a conversation's earlier ones, for models
        that read them all), each judged with the prompt's start: the guard takes one image at a
        time, and an image it did not judge must not reach the engine unscreened. An image a
        text-only guard cannot see is recorded as not screened, never passed off as checked."""
        seen = image if self.engine.sees_images else None
        chunks = self._chunks(prompt, reserved=0)
        verdicts = [self._classify([c], image=seen if i == 0 else None, subject="prompt")
                    for i, c in enumerate(chunks)]
        verdicts += [self._classify([c], subject="system message") for t in context for c in self._chunks(t, 0)]
        for other in more:  # judged verdicts are cached: a history's images cost nothing the next turn
            verdicts.append(self._classify(chunks[:1] or [""], image=other, subject="image") if seen is not None
                            else Verdict(safe=None, model=self.name, screened=NOT_SCREENED, subject="image"))
        if image is not None and seen is None:
            verdicts.append(Verdict(safe=None, model=self.name, screened=NOT_SCREENED, subject="image"))
        return verdicts

    def check_output(self, prompt: str, answer: str) -> Verdict:
        """The answer as the Agent's turn, with the user's instructions as context."""
        with self._lock:
            reserved = self.engine.count_tokens(prompt)
        chunks = self._chunks(answer, reserved=reserved)
        verdicts = [self._classify([prompt, chunk], subject="answer") for chunk in chunks]
        worst = next((v for v in verdicts if v.error), None) or next((v for v in verdicts if v.safe is False), None)
        return worst or max(verdicts, key=lambda v: v.score or 0.0)

    def _chunks(self, text: str, reserved: int) -> list[str]:
        with self._lock:
            if not self._overhead:
                self._overhead = self.engine.count_tokens(build_prompt(["", ""])) + MAX_VERDICT_TOKENS + 8
            budget = self.engine.n_ctx - self._overhead - reserved
            pieces = self.engine.split(text, budget) if budget >= 64 else []
        if budget < 64:
            raise GuardError(
                f"guard context ({self.engine.n_ctx} tokens) is too small for this prompt",
                hint="shorten the question or use a guard model with a larger context",
            )
        return pieces or [text]

    def judge(self, prompt: str, image: Image | None = None) -> tuple[GuardOutput, bool]:
        """The guard's output for a rendered prompt (and its image), from the cache when this prompt
        was judged before, and whether it came from there. A server's clients send the prompts their
        own Guard renders; a server screening the same request on its own finds them here."""
        cache_key = key("guard-v1", self.identity or self.name, prompt, _image_digest(image) if image else "")
        entry = self.store.get(cache_key) if self.store else None
        cached = _cached_output(entry)
        if entry is not None and cached is None and self.store is not None:
            self.store.refuse()  # another version's or a damaged entry: judged again and replaced
        if cached is not None:
            return cached, True
        request = JudgeRequest(prompt=prompt, answer_prefix=ANSWER_PREFIX, grammar=VERDICT_GRAMMAR,
                               max_tokens=MAX_VERDICT_TOKENS, unsafe_word="unsafe", image=image)
        with self._lock:
            output = self.engine.judge(request)
        if self.store:
            self.store.put(cache_key, {"text": output.text, "p_unsafe": output.p_unsafe})
        return output, False

    def _classify(self, messages: list[str], subject: str, image: Image | None = None) -> Verdict:
        prompt = build_prompt(messages, self.policy.categories, image=image is not None)
        started = time.perf_counter()
        try:
            output, cached = self.judge(prompt, image)
        except LlamadocError as err:
            return Verdict(safe=None, model=self.name, subject=subject, error=f"the guard failed: {err}",
                           screened=self._screened(image))
        verdict = self.apply(output)
        verdict.subject = subject
        verdict.screened = self._screened(image)
        verdict.elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        verdict.cached = cached
        return verdict

    @staticmethod
    def _screened(image: Image | None) -> str:
        return "image+text" if image is not None else "text"

    def apply(self, output: GuardOutput) -> Verdict:
        """The policy: a threshold on P(unsafe) overrides the text; only the chosen
        categories count."""
        safe, codes, error = parse_verdict(output.text)
        if error:
            return Verdict(safe=None, model=self.name, score=output.p_unsafe, raw=output.text, error=error)
        if self.policy.threshold is not None and output.p_unsafe is not None:
            unsafe = output.p_unsafe >= self.policy.threshold
        else:
            unsafe = safe is False
        counted = [c for c in codes if c in self.policy.categories]
        if unsafe and codes and not counted:
            unsafe = False  # it violates only categories the user chose not to count
        return Verdict(
            safe=not unsafe,
            categories=counted if unsafe else [],
            category_names=[CATEGORIES[c] for c in counted] if unsafe else [],
            score=output.p_unsafe,
            model=self.name,
            raw=output.text,
        )

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None


def _cached_output(entry: Any) -> GuardOutput | None:
    """A verdict cache entry as written by this version, else None (a miss)."""
    if not isinstance(entry, dict) or set(entry) != {"text", "p_unsafe"} or not isinstance(entry["text"], str):
        return None
    p = entry["p_unsafe"]
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float)):
        return None
    return GuardOutput(text=entry["text"], p_unsafe=float(p) if p is not None else None)
