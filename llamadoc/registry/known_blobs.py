"""Ollama mllama blobs that look right by their metadata and are not: refused by their sha256.

Ollama's converter changed the stored layout of Llama 3.2 Vision twice in May 2025
(ollama/ollama): #10716 (2025-05-15) began permuting the cross-attention q/k rows for
ggml's RoPE order, and #10807 (2025-05-22, "fix: mllama quality") began storing the
vision tower's global-layer gates as tanh(gate) instead of raw. Files made before
carry the same keys and tensor names as files made after, so only their digest tells
them apart. llamadoc's engine reads the layout after both fixes.

Refused, not adapted: adapting would mean rewriting a 6-8 GB file into a second copy,
while `ollama pull` / `llamadoc models pull` fetch the fixed blob the registry now serves.

Evidence for each digest is beside it; a digest seen in a user's report only, not in
Ollama's own records, says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamadoc.errors import ModelError


@dataclass(frozen=True)
class KnownBlob:
    what: str  # the blob, as people met it
    why: str  # what in it the engine cannot read


KNOWN: dict[str, KnownBlob] = {
    # ollama/ollama#10730 (2025-05-16, Ollama 0.7.0): the runner loaded this blob as
    # llama3.2-vision:11b, "architecture=mllama file_type=Q4_K_M num_tensors=908"; the
    # library model was replaced after #10807 ("The model has been updated", #10733, 2025-05-24).
    "7633fdffe14c0f7acc115402376be5bd6052220c348676c5133dc011b35e2429": KnownBlob(
        "llama3.2-vision:11b as Ollama 0.7.0 served it (May 2025)",
        "it was converted before Ollama's fixes of 2025-05-15/22: its vision gates are stored raw",
    ),
    # The text half of the two-file llama3.2-vision:11b of Ollama 0.4-0.6 (396 tensors; its
    # projector was sha256-ece5e659647a...), as Ollama's logs and users' notes name it
    # (ollama/ollama#8310). Its manifest is refused by its layers already; this catches the blob
    # when it is given as a path.
    "11f274007f093fefeec994a5dbbb33d0733a4feb87f7ab66dcd7c1069fef0068": KnownBlob(
        "the text half of Ollama's two-file llama3.2-vision:11b (Ollama 0.4-0.6)",
        "its vision encoder is a separate projector file in a layout llamadoc does not read",
    ),
}


def check(digest: str | None, label: str) -> None:
    """Refuse a blob on the list, in one line that says what to do instead."""
    known = KNOWN.get(digest or "")
    if known is None:
        return
    raise ModelError(
        f"{label} is {known.what}, blob sha256:{digest[:12] if digest else ''}...: {known.why}; "
        "pull the model again (`llamadoc models pull NAME`, or `ollama pull` for Ollama's store) "
        "to get the current blob, or use Meta's checkpoint with `--source meta`"
    )
