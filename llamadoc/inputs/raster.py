"""Documents -> pages: PyMuPDF for PDFs, Pillow (with pillow-heif for HEIC) for images.

Pages come out one at a time (a generator), so a 500-page PDF never sits in memory
whole. Every page is an 8-bit RGB image the right size for the model: rotation and
EXIF orientation applied, alpha flattened on white, odd colour modes converted.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from PIL import Image, ImageOps

from llamadoc.config import DEFAULT_MAX_PIXELS
from llamadoc.errors import DocumentError, UsageError
from llamadoc.inputs import einvoice, textpage
from llamadoc.inputs.sniff import HEAD, KINDS, signature
from llamadoc.inputs.sources import Source
from llamadoc.results import Page, PageWords

MIN_PIXELS = 1024  # 32 x 32: the smallest page a vision encoder can take
MAX_DPI = 300  # above this the budget, not the DPI, is the limit worth raising
MIN_DPI = 36
OCR_DPI = 300  # what Tesseract reads best (benchmarks/ocr_choice.md); not the model's budget
FIXED_DPI = (1.0, 2400.0)  # what --dpi accepts; the pixel limit below still applies per page

# What Pillow's decoders raise on bad data. Anything else raised around them is a bug
# of ours, and surfaces as one.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)
# What each signature sniff.py names is decoded with (Pillow's names for its plugins).
_PILLOW = {"PNG": ["PNG"], "JPEG": ["JPEG"], "TIFF": ["TIFF"], "BigTIFF": ["TIFF"], "GIF": ["GIF"],
           "WebP": ["WEBP"], "BMP": ["BMP"], "HEIF": ["HEIF"], "AVIF": ["AVIF"], "JPEG 2000": ["JPEG2000"],
           "PNM": ["PPM"]}
MAX_ATTACHMENT = 16 << 20  # bytes a PDF's attachment may inflate to (an e-invoice XML is some KiB)
# Pillow plugins whose decoders run another program (EPS: Ghostscript on the file's PostScript):
# never handed bytes, whatever they announce.
RUNS_PROGRAMS = frozenset({"EPS"})
READS = ("PDF, PNG, JPEG, TIFF (BigTIFF too), GIF, WebP, BMP, HEIC/HEIF, AVIF, JPEG 2000, PNM, "
         "e-invoice XML (CII, UBL), e-mail (.eml, .msg) and ZIP/TAR archives")
_REPR = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>")
_MUPDF_CODE = re.compile(r"^code=\d+:\s*")  # MuPDF's error number, which says nothing to a reader


@dataclass(frozen=True)
class RasterOptions:
    dpi: float | None = None  # fixed DPI for PDFs; None: derived from max_pixels
    max_pixels: int | None = None  # None: the model's budget, or DEFAULT_MAX_PIXELS
    pages: str | None = None  # "1-3,7": 1-based, for PDFs and multi-frame images
    password: str | None = None
    # The most pixels a page may be decoded or rendered at before it is fit to the budget (an
    # image past it is refused before decoding); None: Pillow's decompression-bomb limit.
    # `llamadoc serve` sets it: one request must not make the server hold gigabytes.
    ceiling: int | None = None
    max_pages: int | None = None  # the most pages read of one document; None: all

    def __post_init__(self) -> None:
        low, high = FIXED_DPI
        if self.dpi is not None and not (math.isfinite(self.dpi) and low <= self.dpi <= high):
            raise UsageError(f"--dpi {self.dpi:g} is out of range", hint=f"use {low:g} to {high:g}")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or self.max_pixels < MIN_PIXELS):
            raise UsageError(f"--max-pixels {self.max_pixels} is too small",
                             hint=f"use at least {MIN_PIXELS:,} (32 x 32)")
        if self.ceiling is not None and self.max_pixels is not None and self.max_pixels > self.ceiling:
            raise UsageError(f"max_pixels {self.max_pixels:,} is over the limit of {self.ceiling:,} pixels a page",
                             hint=f"use at most {self.ceiling:,}")
        if self.pages is not None:
            parse_pages(self.pages)

    @property
    def budget(self) -> int:
        return self.max_pixels or DEFAULT_MAX_PIXELS


def decoder_message(err: BaseException) -> str:
    """A decoder's complaint without Python's reprs of the buffers it read from."""
    text = _MUPDF_CODE.sub("", _REPR.sub("", str(err)).strip())
    return text or type(err).__name__


def _pdf_errors() -> tuple[type[BaseException], ...]:
    """What PyMuPDF raises on damaged files and pages (MuPDF's own errors and its wrappers')."""
    return (RuntimeError, ValueError, _pymupdf().mupdf.FzErrorBase)


def _pymupdf() -> Any:
    """PyMuPDF, with MuPDF's own messages off: what is wrong with a PDF reaches the user as
    one line of ours, not also as MuPDF's lines on stderr."""
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    return pymupdf


def _register_heif() -> None:
    """HEIC/HEIF decoding (iPhone photos): pillow-heif's libheif, registered on first need. It
    applies the file's irot/imir transforms and resets EXIF orientation, so none is applied twice."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


@contextmanager
def _bombs_refused() -> Iterator[None]:
    """Pillow only warns between its pixel limit and twice it; we refuse from the limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data": the pixels still decode
        yield


def _unknown(label: str, data: bytes) -> str:
    """Why a file is not read: the format Pillow names, when it knows one we do not read. Only
    its header is read, and never by the PostScript plugin, whose decoder runs Ghostscript."""
    if data.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return f"{label}: PostScript (EPS) is not supported"
    Image.init()
    try:
        with Image.open(io.BytesIO(data), formats=[f for f in Image.ID if f not in RUNS_PROGRAMS]) as img:
            name = img.format
    except (*IMAGE_ERRORS, Image.DecompressionBombError):  # a decoder's complaint: not an image we know
        name = None
    if name:
        return f"{label}: {name} is not supported"
    return f"{label} is not a document llamadoc reads"


def _damage(err: BaseException) -> str:
    """What is damaged, in words: Pillow says 'cannot identify' when the header is broken."""
    text = decoder_message(err)
    return "its header cannot be read" if text.startswith("cannot identify image file") else text


def _article(name: str) -> str:
    return "an" if name[:1] in "AEIOU" else "a"


def parse_pages(spec: str) -> list[tuple[int, int | None]]:
    """'1-3,7,10-' -> [(1, 3), (7, 7), (10, None)]; a UsageError for anything else."""
    ranges: list[tuple[int, int | None]] = []
    for part in spec.replace(" ", "").split(","):
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                first = int(lo) if lo else 1
                last = int(hi) if hi else None
            else:
                first = last = int(part)
        except ValueError:
            raise UsageError(f"--pages {spec!r} is not a page list",
                             hint="use numbers and ranges like 1-3,7,10-") from None
        if first < 1 or (last is not None and last < first):
            raise UsageError(f"--pages {spec!r} has an empty or zero range {part!r}", hint="pages count from 1")
        ranges.append((first, last))
    return ranges


def select_pages(spec: str | None, count: int) -> list[int]:
    if spec is None:
        return list(range(1, count + 1))
    chosen: set[int] = set()
    for first, last in parse_pages(spec):
        chosen.update(range(first, min(last or count, count) + 1))
    return sorted(chosen)


def page_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency becomes white, 16-bit is scaled down."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = img.convert("I") if img.mode.startswith("I;16") else img
        lo, hi = (float(v) for v in img.getextrema())  # type: ignore[arg-type]  # one band: numbers
        scale = 255.0 / (hi - lo) if hi > lo else 1.0  # stretch the used range, as a viewer would
        img = img.point(lambda v: (v - lo) * scale + 0.5).convert("L")  # + 0.5: rounded, so the top is 255
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def fit_budget(img: Image.Image, max_pixels: int) -> Image.Image:
    """Shrink (never enlarge) to at most ``max_pixels``, keeping the aspect ratio."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


class Document:
    """An opened document; use as a context manager and iterate ``pages()``."""

    def __init__(self, source: Source, options: RasterOptions) -> None:
        self.source = source
        self.options = options
        self.kind = ""
        self.page_count = 0
        self._pdf: Any = None
        self._image: Image.Image | None = None
        self._xml: einvoice.Found | None = None  # a standalone e-invoice, parsed when opened
        self._attached: einvoice.Found | None = None  # a PDF's, parsed on first need
        self._info: dict[int, tuple[str | None, bool]] = {}  # page_info, read once per page
        self._open()

    def __enter__(self) -> Document:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
            self._pdf = None
        if self._image is not None:
            self._image.close()
            self._image = None

    @property
    def label(self) -> str:
        return self.source.label

    def _open(self) -> None:
        if self.source.error:
            raise DocumentError(self.source.error)
        try:
            data = self.source.read_bytes()
        except OSError as err:
            raise DocumentError(f"cannot read {self.label}: {err.strerror or err}") from None
        if not data:
            raise DocumentError(f"{self.label} is empty (0 bytes)")
        name = signature(data[:HEAD])
        if name is None:
            raise DocumentError(_unknown(self.label, data), hint=f"llamadoc reads {READS}")
        kind = KINDS[name]
        if kind in ("mail", "archive"):  # sources.collect opens them; a Source made by hand arrives whole
            raise DocumentError(f"{self.label} is {_article(name)} {name}: its attachments or members are the "
                                "documents", hint="give it to llamadoc as a file, or pass its members")
        self.kind = kind
        if kind == "pdf":
            self._open_pdf(data)
        elif kind == "xml":
            self._open_xml(data)
        else:
            self._open_image(data, name)

    def _open_pdf(self, data: bytes) -> None:
        pymupdf = _pymupdf()  # imported here: only PDFs need it

        try:
            pdf = pymupdf.open(stream=data, filetype="pdf")
        except _pdf_errors() as err:
            raise DocumentError(
                f"{self.label} is not a readable PDF ({decoder_message(err)}); is it truncated or damaged?"
            ) from None
        try:
            if pdf.needs_pass:
                if self.options.password is None:
                    raise DocumentError(f"{self.label} is encrypted", hint="pass its password with --password")
                if not pdf.authenticate(self.options.password):
                    raise DocumentError(f"the password given does not open {self.label}", hint="check --password")
            count = pdf.page_count  # a page tree whose /Count lies fails here
        except _pdf_errors() as err:
            pdf.close()
            raise DocumentError(f"{self.label} is a damaged PDF ({decoder_message(err)})") from None
        except DocumentError:
            pdf.close()
            raise
        if count == 0:
            pdf.close()
            raise DocumentError(f"{self.label} has no pages; is it truncated or damaged?")
        self._pdf = pdf
        self.page_count = count

    def _open_xml(self, data: bytes) -> None:
        """An e-invoice XML of its own: its pages are the invoice rendered as text, for the
        tasks that read pages (extract takes its fields from the XML itself)."""
        name = re.split(r"[#/\\]", self.label)[-1]  # the file's name, in a container too
        try:
            invoice = einvoice.parse(data, self.label)
        except DocumentError as err:
            raise DocumentError(err.message, hint="llamadoc reads XML that is a CII or UBL e-invoice") from None
        self._xml = einvoice.Found(name, data, invoice)
        self._open_pdf(textpage.render_html(textpage.invoice_html(invoice, name)))

    def _open_image(self, data: bytes, name: str) -> None:
        if name == "HEIF":
            _register_heif()
        try:
            with _bombs_refused():
                # Only the decoder the signature names: a damaged TIFF is not read as something else.
                img = Image.open(io.BytesIO(data), formats=_PILLOW[name])
                try:
                    self._decode_small(img)
                    img.load()
                except BaseException:
                    img.close()
                    raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise self._bomb() from None
        except IMAGE_ERRORS as err:
            raise DocumentError(f"{self.label} is a damaged {name} image ({_damage(err)})") from None
        self._image = img
        # An MPO (what phone cameras write as .jpg) keeps a second, smaller view after the photo.
        self.page_count = 1 if img.format == "MPO" else getattr(img, "n_frames", 1)

    def _decode_small(self, img: Image.Image) -> None:
        """Before the pixels are decoded: JPEG and JPEG 2000 decode at a fraction of their size
        when the budget needs no more (libjpeg's DCT scaling, OpenJPEG's resolution levels), so
        a 40-megapixel photo never exists whole in memory. The other formats decode whole, and
        past the ceiling they are refused here, from the header alone."""
        w, h = img.size
        budget, ceiling = self.options.budget, self.options.ceiling
        decoded = (w, h)
        if w * h > budget and img.format in ("JPEG", "MPO"):
            scale = math.sqrt(budget / (w * h))
            img.draft(img.mode, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
            decoded = img.size  # what the draft will decode: at least the budget's size
        elif w * h > budget and img.format == "JPEG2000":
            factor = 0  # each resolution level halves both sides
            while factor < 5 and math.ceil(w / 2 ** (factor + 1)) * math.ceil(h / 2 ** (factor + 1)) >= budget:
                factor += 1
            img.reduce = factor  # type: ignore[method-assign, assignment]  # the plugin's setter, before load
            decoded = (math.ceil(w / 2**factor), math.ceil(h / 2**factor))
        if ceiling is not None and decoded[0] * decoded[1] > ceiling:
            raise DocumentError(
                f"{self.label} is too large to decode safely ({w:,} x {h:,} pixels, over the limit of {ceiling:,} "
                "pixels a page)",
                hint=f"downscale it first: the model reads about {budget:,} pixels")

    def _bomb(self) -> DocumentError:
        return DocumentError(
            f"{self.label} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels)",
            hint="downscale it first; this limit guards against decompression bombs",
        )

    def e_invoice(self) -> einvoice.Found | None:
        """The e-invoice this document is, or that a PDF carries, parsed once; None when none.
        A DocumentError (one line) when a PDF carries one that cannot be read."""
        if self._xml is not None:
            return self._xml
        if self._attached is None:
            found = einvoice.find(self.embedded_files())
            if found is None:
                return None
            name, xml = found
            self._attached = einvoice.Found(name, xml, einvoice.parse(xml, name))
        return self._attached

    def embedded_files(self) -> dict[str, bytes]:
        """XML files attached to a PDF (e-invoice XML lives in one); empty for images and XML, and
        when an attachment would inflate past MAX_ATTACHMENT: PyMuPDF reads an attachment whole,
        and a 1 MB one can inflate to gigabytes."""
        if self._pdf is None or self._xml is not None:
            return {}
        try:
            names = [n for n in self._pdf.embfile_names() if n.lower().endswith(".xml")]
            if not names or not self._attachments_bounded(len(self._pdf.embfile_names())):
                return {}
            return {name: self._pdf.embfile_get(name) for name in names}
        except _pdf_errors() as err:
            raise DocumentError(f"the attachments of {self.label} cannot be read ({decoder_message(err)})") from None

    def _attachments_bounded(self, count: int) -> bool:
        """Whether each of the PDF's ``count`` attachments inflates to at most MAX_ATTACHMENT bytes,
        found by inflating at most that much of each. Unfiltered and Flate streams are checked;
        an attachment under another filter, or not marked as one, is not read at all."""
        pdf, checked = self._pdf, 0
        for xref in range(1, pdf.xref_length()):
            if pdf.xref_get_key(xref, "Type") != ("name", "/EmbeddedFile") or not pdf.xref_is_stream(xref):
                continue
            kind, value = pdf.xref_get_key(xref, "Filter")
            raw = pdf.xref_stream_raw(xref)
            if kind == "null":
                size = len(raw)
            elif value in ("/FlateDecode", "[/FlateDecode]") and pdf.xref_get_key(xref, "DecodeParms")[0] == "null":
                try:
                    size = len(zlib.decompressobj().decompress(raw, MAX_ATTACHMENT + 1))
                except zlib.error:
                    return False
            else:
                return False
            if size > MAX_ATTACHMENT:
                return False
            checked += 1
        return checked >= count

    def selected(self) -> list[int]:
        indices = select_pages(self.options.pages, self.page_count)
        if not indices:
            raise DocumentError(
                f"--pages {self.options.pages} selects nothing in {self.label}",
                hint=f"it has {self.page_count} page(s)",
            )
        most = self.options.max_pages
        if most is not None and len(indices) > most:
            raise DocumentError(f"{len(indices):,} pages of {self.label} are selected, over the limit of {most:,}",
                                hint=f"select at most {most:,} with pages (e.g. 1-{most}), or split the document")
        return indices

    def pages(self, indices: list[int] | None = None) -> Iterator[Page]:
        """Rasterise the chosen pages (1-based) one at a time."""
        for index in self.selected() if indices is None else indices:
            yield self._pdf_page(index) if self._pdf is not None else self._image_page(index)

    def page_info(self, index: int) -> tuple[str | None, bool]:
        """A page's text layer (None for images and scans) and whether it has pictures
        or drawings, without rasterising it."""
        if self._pdf is None:
            return None, True
        if index not in self._info:  # ask's page plan reads it before the page is rendered
            try:
                page = self._pdf[index - 1]
                self._info[index] = (page.get_text("text").strip() or None,
                                     bool(page.get_images()) or bool(page.get_drawings()))
            except _pdf_errors() as err:
                raise self._damaged(index, err) from None
        return self._info[index]

    def words(self, index: int) -> PageWords | None:
        """A PDF page's text-layer words and their boxes; None for images and pages without text."""
        if self._pdf is None:
            return None
        from llamadoc.inputs.words import pdf_words

        try:
            return pdf_words(self._pdf[index - 1], index)
        except _pdf_errors() as err:
            raise self._damaged(index, err) from None

    def read_words(self, index: int) -> PageWords:
        """OCR of a page (for one without a text layer): the page drawn at OCR_DPI (a PDF) or
        the upright image, with boxes in the page's own unit (PDF points, image pixels)."""
        from llamadoc.inputs import ocr

        if self._pdf is not None:
            import pymupdf

            try:
                page = self._pdf[index - 1]
                # At OCR_DPI, but never past what OCR reads (ocr.MAX_PIXELS): a 200-inch page is
                # drawn at 36 DPI, not into a 60,000-pixel-square image of tens of GB.
                area = max(1.0, page.rect.width * page.rect.height)
                zoom = min(OCR_DPI / 72, (ocr.MAX_PIXELS / area) ** 0.5)
                pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
            except _pdf_errors() as err:
                raise DocumentError(f"page {index} of {self.label} cannot be rendered ({decoder_message(err)})") \
                    from None
            image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
            return ocr.read(image, index, page.rect.width, page.rect.height)
        frame = self._frame(index)
        return ocr.read(frame, index, frame.width, frame.height)

    def _damaged(self, index: int, err: BaseException) -> DocumentError:
        return DocumentError(f"page {index} of {self.label} cannot be read: damaged PDF ({decoder_message(err)})")

    def _pdf_page(self, index: int) -> Page:
        import pymupdf

        try:
            page = self._pdf[index - 1]
            width_in, height_in = page.rect.width / 72, page.rect.height / 72  # rect is after /Rotate
        except _pdf_errors() as err:
            raise self._damaged(index, err) from None
        if self.options.dpi is not None:
            dpi = float(self.options.dpi)
        else:
            budget = self.options.budget
            dpi = math.sqrt(budget / max(width_in * height_in, 1e-6))
            dpi = max(MIN_DPI, min(MAX_DPI, dpi))
            # MuPDF rounds the pixmap size up: step down until the budget holds.
            while dpi > MIN_DPI and math.ceil(width_in * dpi) * math.ceil(height_in * dpi) > budget:
                dpi *= 0.998
        # A fixed DPI, or the least DPI on a page the size of a wall, must not render gigapixels.
        pixels = math.ceil(width_in * dpi) * math.ceil(height_in * dpi)
        if pixels > (self.options.ceiling or Image.MAX_IMAGE_PIXELS):
            raise DocumentError(
                f"page {index} of {self.label} at {dpi:g} DPI would be {pixels:,.0f} pixels",
                hint="lower --dpi" if self.options.dpi is not None else "the page is too large to render",
            )
        try:
            zoom = dpi / 72  # a matrix, not dpi=: the budget gives fractional DPIs
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
        except _pdf_errors() as err:
            raise DocumentError(f"page {index} of {self.label} cannot be rendered ({decoder_message(err)})") from None
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        text, graphics = self.page_info(index)
        return Page(index=index, image=image, dpi=round(dpi, 2), text=text, rotation=page.rotation,
                    graphics=graphics)

    def _frame(self, index: int) -> Image.Image:
        """Frame ``index`` upright, in 8-bit RGB, at its own size."""
        assert self._image is not None
        img = self._image
        try:
            with _bombs_refused():  # a GIF frame placed far out grows the image only when reached
                img.seek(index - 1)
                frame = ImageOps.exif_transpose(img)  # a copy, upright
                frame.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise self._bomb() from None
        except IMAGE_ERRORS as err:
            raise DocumentError(f"frame {index} of {self.label} cannot be decoded ({decoder_message(err)})") from None
        return page_rgb(frame)

    def _image_page(self, index: int) -> Page:
        assert self._image is not None
        frame = self._frame(index)
        dpi = self._image.info.get("dpi")
        frame = fit_budget(frame, self.options.budget)
        return Page(index=index, image=frame, dpi=float(dpi[0]) if dpi else None)


def open_document(source: Source, options: RasterOptions) -> Document:
    return Document(source, options)
