"""llama-cpp-python + libmtmd: any GGUF model + mmproj pair that llama.cpp supports.

The model is loaded once and answers every page. Images reach libmtmd only as
``data:`` URIs: a document can never make the tool fetch a URL.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamadoc.engines import llamacpp
from llamadoc.engines.base import GenerationRequest, GenerationResponse, LoadOptions, OnText
from llamadoc.engines.textstream import TextStream
from llamadoc.errors import ContextFull, EngineError, ModelError, PageError
from llamadoc.gguf_header import gguf_metadata


def _image_bytes(image: Any) -> bytes:
    # BMP: lossless like PNG, but 25x faster to write (4 ms for an A4 page vs 100 ms),
    # and libmtmd's stb_image reads it into the same pixels.
    buf = io.BytesIO()
    image.save(buf, format="BMP")
    return buf.getvalue()


@dataclass(frozen=True)
class Picture:
    """An image in a prompt: known by its pixels' hash, whatever message or request carries it."""

    key: str
    n_pos: int  # positions it takes in the context
    chunk: Any = field(compare=False, repr=False)  # libmtmd's chunk, valid while its prompt is tokenised


Unit = int | Picture  # a text token, or an image


def _template_error(message: str) -> None:
    raise EngineError(f"the model's chat template refused this conversation: {message}")


# Projectors that resize every image to one fixed size; the others (Qwen2.5-VL,
# Pixtral, SmolVLM's tiles, ...) make more tokens from more pixels.
FIXED_SIZE_PROJECTORS = frozenset({"mlp", "mlp_norm", "ldp", "ldpv2", "gemma3", "adapter"})


@dataclass(frozen=True)
class Geometry:
    image_size: int
    patch: int
    merge: int
    fixed: bool

    def tokens(self, pixels: int) -> int:
        """An upper bound on the tokens an image of ``pixels`` becomes."""
        per_side = self.image_size // self.patch // self.merge
        count = per_side * per_side if self.fixed else math.ceil(pixels / (self.patch * self.merge) ** 2)
        return count + 16  # begin/end-of-image and row-break tokens


def projector_geometry(mmproj_path: str) -> Geometry:
    meta = gguf_metadata(
        mmproj_path,
        ("clip.projector_type", "clip.vision.image_size", "clip.vision.patch_size",
         "clip.vision.spatial_merge_size", "clip.vision.projector.scale_factor"),
    )
    if meta["general.architecture"] != "clip":
        raise ModelError(f"{mmproj_path} is not a vision projector (architecture {meta['general.architecture']})")
    merge = meta["clip.vision.spatial_merge_size"] or meta["clip.vision.projector.scale_factor"] or 1
    return Geometry(
        image_size=int(meta["clip.vision.image_size"] or 336),
        patch=int(meta["clip.vision.patch_size"] or 14),
        merge=int(merge),
        fixed=meta["clip.projector_type"] in FIXED_SIZE_PROJECTORS,
    )


class TokenChances:
    """The model's log probability of each token the generation picks, read through llama-cpp-
    python's logits-processor hook, which sees each step's logits over the whole vocabulary
    before any grammar narrows them. (``logits_all``, llama-cpp-python's own logprobs, would
    keep the logits of every prompt token too: gigabytes for a page image.)"""

    def __init__(self) -> None:
        self.pieces: list[tuple[bytes, float]] = []
        self._row: Any = None  # the step's logits, until its token is known

    def __call__(self, _input_ids: Any, scores: Any) -> Any:
        self._row = scores.copy()  # the buffer is llama.cpp's: sampling may narrow it in place
        return scores

    def take(self, token: int, piece: bytes) -> None:
        """The token this step picked, and its bytes."""
        if self._row is not None:
            import numpy as np

            top = float(self._row.max())
            lse = top + float(np.log(np.exp(self._row - top).sum()))
            self.pieces.append((piece, float(self._row[token]) - lse))
            self._row = None

    def spelling(self, text: str) -> list[tuple[bytes, float]]:
        """The pieces, when they spell the answer's text; else none (a stop string cut it)."""
        return self.pieces if b"".join(p for p, _ in self.pieces) == text.encode("utf-8") else []


def _data_uri_handler() -> type:
    from llama_cpp.llama_chat_format import MTMDChatHandler

    class DataUriHandler(MTMDChatHandler):
        """The stock handler would fetch any other URL with urllib; we never allow that."""

        @staticmethod
        def _load_image(image_url: str) -> bytes:
            if not image_url.startswith("data:"):
                raise ValueError("only data: URIs are accepted for images")
            return base64.b64decode(image_url.split(",", 1)[1])

    return DataUriHandler


class MtmdEngine:
    name = "mtmd"
    max_images = 1  # one page per request: answers must rest on one page
    max_batch = 1  # llama-cpp-python's chat handler decodes one sequence
    supports_schema = True

    def __init__(self, options: LoadOptions, max_pixels: int) -> None:
        if options.mmproj_path is None:
            raise ModelError(f"{options.model_path} needs a vision projector", hint="pass --mmproj PATH")
        llamacpp.set_logging(options.verbose)
        meta = _model_meta(options.model_path)
        self._geometry = projector_geometry(options.mmproj_path)
        gpu = llamacpp.gpu_available()
        self.gpu_layers = llamacpp.gpu_layers(options) if gpu else 0
        n_ctx = options.n_ctx or self._context_size(options, max_pixels, meta["context"])
        try:
            handler = _data_uri_handler()(clip_model_path=options.mmproj_path, verbose=options.verbose, use_gpu=gpu)
        except ValueError as err:
            raise ModelError(f"cannot use vision projector {options.mmproj_path}: {err}") from None
        self._llm = llamacpp.load_llama(
            options, n_ctx, options.threads or llamacpp.default_threads(), chat_handler=handler
        )
        if not isinstance(self._llm.metadata.get("tokenizer.chat_template"), str):
            raise ModelError(
                f"{options.model_path} has no chat template (tokenizer.chat_template)",
                hint="use an instruct/chat GGUF; base models cannot follow page prompts",
            )
        try:
            handler._init_mtmd_context(self._llm)  # pair the projector now, not at the first page
        except ValueError:
            raise ModelError(
                f"vision projector {options.mmproj_path} does not fit model {options.model_path}",
                hint="use the mmproj file published with this model; --verbose shows libmtmd's reason",
            ) from None
        self._handler = handler
        self._mtmd = handler._mtmd_cpp
        self._template = _chat_template(self._llm.metadata["tokenizer.chat_template"])
        self._units: list[Unit] = []  # what the context holds now, position by position
        self.n_ctx = n_ctx
        self.device = "GPU" if self.gpu_layers else "CPU"
        self.architecture = meta["architecture"]

    def _context_size(self, options: LoadOptions, max_pixels: int, trained: int | None) -> int:
        need = self._geometry.tokens(max_pixels) + options.prompt_tokens + options.max_tokens
        size = llamacpp.round_up(need)
        return min(size, trained) if trained else size

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        return self.stream(request, lambda _text: True)

    def stream(self, request: GenerationRequest, on_text: OnText) -> GenerationResponse:
        """Answer as decoded: ``on_text`` hears each step's text and may stop the generation there.

        The prompt's evaluated tokens (images among them, known by their pixels' hash) stay in
        the context: a conversation's next turn evaluates only what follows the longest shared
        prefix, so a follow-up about a page costs its new tokens, not a second image encoding.
        """
        import llama_cpp  # loaded already: the engine's model is a llama_cpp.Llama

        started = time.perf_counter()
        with self._chunks(request) as units:
            self._check_fits(units, request)
            reused = self._evaluate(units)
        prefill_ms = (time.perf_counter() - started) * 1000
        prompt = self._llm.input_ids[: self._llm.n_tokens].tolist()  # what generate() finds cached
        grammar = None
        if request.schema is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            grammar = LlamaGrammar.from_string(llamacpp.schema_grammar(request.schema), verbose=False)
        s = request.sampling
        self._llm.set_seed(s.seed)
        text, finish, n = TextStream(request.stop), "length", 0
        decode_started = time.perf_counter()
        vocab = self._llm._model.vocab
        chances = TokenChances()
        tokens = self._llm.generate(prompt, top_k=0, top_p=s.top_p, min_p=0.0, temp=s.temperature,
                                    repeat_penalty=1.0,  # a penalty would alter faithful copies of figures
                                    grammar=grammar, logits_processor=llama_cpp.LogitsProcessorList([chances]))
        try:
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                n += 1
                piece = self._llm.detokenize([token])
                chances.take(token, piece)
                if on_text(text.feed(piece)) is False:
                    finish = "cancelled"
                    break
                if text.stopped:
                    finish = "stop"
                    break
                if n >= request.max_tokens or self._llm.n_tokens + 1 >= self.n_ctx:
                    break
        finally:
            tokens.close()
        # The last sampled token was never evaluated: the context holds the prompt and the tokens before it.
        self._units += [int(t) for t in self._llm.input_ids[len(prompt):self._llm.n_tokens]]
        if finish != "cancelled":
            tail = text.finish()
            if tail:
                on_text(tail)
        decode_ms = (time.perf_counter() - decode_started) * 1000
        return GenerationResponse(
            text=text.text, prompt_tokens=len(prompt), completion_tokens=n, finish_reason=finish,
            # prefill includes the images' encoding (libmtmd does not time its encoder apart).
            timings_ms={"model": round(prefill_ms + decode_ms, 2), "prefill": round(prefill_ms, 2),
                        "decode": round(decode_ms, 2)}, prompt_reused=reused, logprobs=chances.spelling(text.text),
        )

    # -- the prompt ---------------------------------------------------------------------

    def _render(self, request: GenerationRequest) -> tuple[str, list[Any]]:
        """The conversation through the model's own chat template, images as libmtmd's marker."""
        marker = self._mtmd.mtmd_default_marker().decode()
        messages: list[dict[str, Any]] = []
        images: list[Any] = []
        for m in request.conversation():
            if m.images:
                images += m.images
                parts = [{"type": "text", "text": marker} for _ in m.images]
                messages.append({"role": m.role, "content": [*parts, {"type": "text", "text": m.text}]})
            else:
                messages.append({"role": m.role, "content": m.text})
        llm = self._llm
        text = self._template.render(
            messages=messages, add_generation_prompt=messages[-1]["role"] != "assistant",
            bos_token=llm.detokenize([llm.token_bos()]).decode(errors="ignore"),
            eos_token=llm.detokenize([llm.token_eos()]).decode(errors="ignore"),
            raise_exception=_template_error, strftime_now=lambda f: time.strftime(f),
        )
        return text, images

    @contextlib.contextmanager
    def _chunks(self, request: GenerationRequest) -> Iterator[list[Unit]]:
        """The prompt as libmtmd tokenises it: a text token, or an image (its hash, positions, chunk)."""
        mtmd = self._mtmd
        text, images = self._render(request)
        bitmaps = []
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            encoded = [_image_bytes(img) for img in images]
            for data in encoded:
                buf = (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data))
                bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self._handler.mtmd_ctx, buf, len(data), False)
                if not bitmap:
                    raise PageError("libmtmd cannot read an image of this request")
                bitmaps.append(bitmap)
            raw = text.encode()
            given = mtmd.mtmd_input_text()
            given.text, given.text_len, given.add_special, given.parse_special = raw, len(raw), True, True
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            failed = mtmd.mtmd_tokenize(self._handler.mtmd_ctx, chunks, ctypes.byref(given), array, len(bitmaps))
            if failed:
                raise PageError(f"libmtmd cannot tokenise this prompt (error {failed}): "
                                "its images and the template's image markers do not match")
            units: list[Unit] = []
            keys = iter(hashlib.blake2b(data, digest_size=16).hexdigest() for data in encoded)
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    units += [int(ptr[j]) for j in range(n.value)]
                else:
                    units.append(Picture(next(keys), mtmd.mtmd_input_chunk_get_n_pos(chunk), chunk))
            yield units
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _check_fits(self, units: list[Unit], request: GenerationRequest) -> None:
        """Refuse a prompt that cannot fit before llama.cpp fails on it less clearly."""
        image_pos = sum(u.n_pos for u in units if isinstance(u, Picture))
        need = sum(1 if isinstance(u, int) else u.n_pos for u in units) + 1  # + room for one answer token
        if need <= self.n_ctx:
            return
        text_tokens = need - 1 - image_pos
        if image_pos:
            raise ContextFull(f"the prompt needs {need - 1} tokens ({image_pos} for its images, {text_tokens} of "
                              f"text) but the context holds {self.n_ctx}", need=need, have=self.n_ctx,
                              hint="lower --max-pixels, or raise --ctx")
        raise ContextFull(f"the prompt is {text_tokens} tokens long but the context holds {self.n_ctx}",
                          need=need, have=self.n_ctx, hint="shorten the prompt, or raise --ctx")

    def _evaluate(self, units: list[Unit]) -> int:
        """Bring the context to ``units``: keep the longest prefix it holds, evaluate the rest.
        Returns how many prompt positions were reused."""
        import llama_cpp

        llm, mtmd = self._llm, self._mtmd
        keep, pos = 0, 0
        for old, new in zip(self._units, units, strict=False):
            if old != new or keep == len(units) - 1:  # at least the last token is evaluated, for its logits
                break
            keep += 1
            pos += 1 if isinstance(new, int) else new.n_pos
        self._units = list(units[:keep])
        llm.n_tokens = pos
        llm._ctx.kv_cache_seq_rm(-1, pos, -1)
        text: list[int] = []
        try:
            for u in units[keep:]:
                if isinstance(u, int):
                    text.append(u)
                    continue
                if text:
                    llm.eval(text)
                    self._units += text
                    text = []
                n_past = llama_cpp.llama_pos(0)
                failed = mtmd.mtmd_helper_eval_chunk_single(self._handler.mtmd_ctx, llm._ctx.ctx, u.chunk,
                                                            llm.n_tokens, 0, llm.n_batch, False,
                                                            ctypes.byref(n_past))
                if failed:
                    raise EngineError(f"libmtmd failed on an image of this request (error {failed})")
                llm.input_ids[llm.n_tokens:n_past.value] = -1  # an image's positions match no token
                llm.n_tokens = n_past.value
                self._units.append(u)
            if text:
                llm.eval(text)
                self._units += text
        except BaseException:
            self._units = []  # the context is in an unknown state: the next prompt starts afresh
            llm.n_tokens = 0
            raise
        return pos

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        self._llm.close()


def _chat_template(source: str) -> Any:
    """The GGUF's Jinja chat template, in the sandbox llama-cpp-python renders it in."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[
        Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols])
    env.filters["tojson"] = Jinja2ChatFormatter.tojson
    try:
        return env.from_string(source)
    except jinja2.TemplateError as err:
        raise ModelError(f"the model's chat template does not parse: {err}") from None


def _model_meta(path: str) -> dict[str, Any]:
    meta = gguf_metadata(path, ("{arch}.context_length",))
    context = meta["{arch}.context_length"]
    return {"architecture": meta["general.architecture"], "context": int(context) if context else None}
