"""The options of a run that shape every answer: rasterising, the token budget, sampling.

They check themselves when made, with the message the CLI prints, so a Python caller
and every face get the same one-line errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llamadoc.engines.base import Sampling
from llamadoc.errors import UsageError
from llamadoc.inputs.raster import RasterOptions


@dataclass(frozen=True)
class RunOptions:
    raster: RasterOptions = field(default_factory=RasterOptions)
    max_tokens: int = 1024
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")
        s = self.sampling
        if not (math.isfinite(s.temperature) and s.temperature >= 0):
            raise UsageError("--temperature must be 0 or more", hint="0 is greedy")
        if not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
            raise UsageError("--top-p must be above 0 and at most 1")

    def recorded(self) -> dict[str, Any]:
        """The options that shape an answer, as the result document records them."""
        return {
            "dpi": self.raster.dpi,
            "max_pixels": self.raster.budget,
            "pages": self.raster.pages,
            "max_tokens": self.max_tokens,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "seed": self.sampling.seed,
        }
