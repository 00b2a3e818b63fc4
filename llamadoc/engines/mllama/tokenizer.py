"""Tokenisation with llama.cpp's own tokenizer, and the Llama 3 chat format with the <|image|> token.

llama.cpp refuses architecture 'mllama' even for vocab_only loads, so the tokenizer keys are
copied into a tensor-less 'llama' GGUF in a temporary folder and loaded from there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Iterator

import llama_cpp

from llamadoc.errors import ModelError

from .gguf_io import GGUFFile, write_vocab_only

IMAGE_TOKEN = "<|image|>"
_mute = llama_cpp.llama_log_callback(lambda level, text, data: None)  # kept alive: ctypes callbacks die with it


@contextlib.contextmanager
def quiet_llama() -> Iterator[None]:
    """Silence llama.cpp's loader chatter for one call, then restore whatever logger was set."""
    prev_cb = llama_cpp.llama_log_callback()
    prev_data = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(prev_cb), ctypes.byref(prev_data))
    llama_cpp.llama_log_set(_mute, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(prev_cb, prev_data)


class Tokenizer:
    """The model's vocabulary: text <-> token ids, special tokens, and the chat format."""

    def __init__(self, gguf: GGUFFile) -> None:
        with tempfile.TemporaryDirectory(prefix="llamadoc-vocab-") as tmp:
            path = os.path.join(tmp, "vocab.gguf")
            write_vocab_only(gguf, path)
            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            with quiet_llama():
                self._model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not self._model:
            raise ModelError(f"{gguf.path}: llama.cpp cannot read the tokenizer (tokenizer.ggml.* keys)")
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_tokens = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eot = self._special("<|eot_id|>", fallback=llama_cpp.llama_vocab_eot(self.vocab))
        self.image = self._special(IMAGE_TOKEN)
        self.start_header = self._special("<|start_header_id|>")
        self.end_header = self._special("<|end_header_id|>")
        if min(self.image, self.start_header, self.end_header, self.eot, self.bos) < 0:
            raise ModelError(f"{gguf.path}: the vocabulary lacks the Llama 3 special tokens "
                             f"({IMAGE_TOKEN}, <|start_header_id|>, <|eot_id|>)")
        # The instruct model's end tokens: end of turn, end of message (tool calls), end of text.
        ends = [self._special(t) for t in ("<|eom_id|>", "<|end_of_text|>")]
        self.stop = {t for t in (self.eot, llama_cpp.llama_vocab_eos(self.vocab), *ends) if t >= 0}

    def _special(self, text: str, fallback: int = -1) -> int:
        ids = self.encode(text, special=True)
        return ids[0] if len(ids) == 1 else fallback

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of text; with ``special`` the control-token spellings become control tokens.

        Text that comes from documents or users is encoded with special=False, so a page that
        contains "<|eot_id|>" cannot end a turn early.
        """
        data = text.encode()
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, special)
        if n < 0:  # cannot happen with one slot per byte, but llama.cpp reports it this way
            raise ModelError(f"llama.cpp could not tokenise a {len(data)}-byte text")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def decode(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode(errors="replace")

    def header(self, role: str) -> list[int]:
        return [self.start_header, *self.encode(role), self.end_header, *self.encode("\n\n")]

    def chat(self, user: str, system: str | None = None, image: bool = False) -> list[int]:
        """One user turn in the Llama 3.2 Vision chat format, ending with the assistant header."""
        return self.dialog([("user", user)], system, 0 if image else None)

    def dialog(self, turns: list[tuple[str, str]], system: str | None = None, image_at: int | None = None) -> list[int]:
        """A conversation in the Llama 3.2 Vision chat format: (role, text) turns, the <|image|> token
        opening turn ``image_at``, then the assistant header (or, when the last turn is the
        assistant's, its text left open for the model to continue, as Ollama does).

        The model's template forbids a system turn beside an image; the system text then opens
        the first user turn (after the image token when that turn holds it) instead of being
        dropped. A tool's result is the template's "ipython" turn.
        """
        ids = [self.bos]
        if system and image_at is None:
            ids += self.header("system") + self.encode(system) + [self.eot]
            system = None
        for i, (role, text) in enumerate(turns):
            ids += self.header("ipython" if role == "tool" else role)
            if i == image_at:
                ids.append(self.image)
            if system and role == "user":
                text, system = system + "\n\n" + text, None
            ids += self.encode(text)
            if i < len(turns) - 1 or role != "assistant":
                ids.append(self.eot)
        if not turns or turns[-1][0] != "assistant":
            ids += self.header("assistant")
        return ids

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()
