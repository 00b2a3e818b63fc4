"""Documents -> pages: every input kind, conversions, and every bad-input error."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from llamadoc.errors import DocumentError, UsageError
from llamadoc.raster import RasterOptions, open_document, parse_pages, select_pages
from llamadoc.sources import Source
from tests.conftest import CORPUS, make_image, make_pdf


def pages_of(path: Path, **options: object) -> list:
    with open_document(Source(label=str(path), path=path), RasterOptions(**options)) as doc:  # type: ignore[arg-type]
        return list(doc.pages())


def test_page_ranges() -> None:
    assert parse_pages("1-3,7,10-") == [(1, 3), (7, 7), (10, None)]
    assert select_pages("2-3,9", 5) == [2, 3]
    assert select_pages("4-", 5) == [4, 5]
    assert select_pages(None, 3) == [1, 2, 3]
    for bad in ("a", "3-1", "0", "1,,2"):
        with pytest.raises(UsageError):
            parse_pages(bad)


def test_pdf_pages_fit_the_pixel_budget_and_keep_the_text_layer(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "r.pdf", ["Invoice 42", "Total 99.50"])
    pages = pages_of(pdf, max_pixels=500_000)
    assert [p.index for p in pages] == [1, 2]
    for p in pages:
        assert p.image.mode == "RGB"
        assert 0.9 * 500_000 < p.image.width * p.image.height <= 500_000
        assert p.dpi and 60 < p.dpi < 80  # A4 at this budget
    assert pages[1].text == "Total 99.50"
    assert pages_of(pdf, dpi=50, pages="2")[0].image.size == (414, 585)  # 595 x 842 pt


def test_pdf_rotation_is_applied(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "rot.pdf", ["upright", "turned"], rotate={2: 90})
    first, second = pages_of(pdf, dpi=36)
    assert first.image.height > first.image.width
    assert second.image.width > second.image.height
    assert second.rotation == 90


def test_encrypted_pdf_needs_the_right_password(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "secret.pdf", ["classified"], password="s3cret")
    with pytest.raises(DocumentError, match="is encrypted.*--password"):
        pages_of(pdf)
    with pytest.raises(DocumentError, match="does not open"):
        pages_of(pdf, password="wrong")
    assert pages_of(pdf, password="s3cret", dpi=36)[0].text == "classified"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"just some text, not a document\n", "is not a PDF or an image"),
        (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog", "truncated or damaged"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a readable image"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pdf"
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=message) as err:
        pages_of(path)
    assert "\n" not in str(err.value)


def test_a_pdf_cut_before_its_cross_reference_is_repaired(tmp_path: Path) -> None:
    whole = make_pdf(tmp_path / "whole.pdf", ["page one text", "page two text", "page three"]).read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(whole[: whole.rfind(b"startxref")])  # the pages are there, the table to find them is not
    assert [p.text for p in pages_of(cut, dpi=36)] == ["page one text", "page two text", "page three"]


def test_a_pdf_cut_to_its_header_is_damaged(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(make_pdf(tmp_path / "whole.pdf", ["text"]).read_bytes()[:20])
    with pytest.raises(DocumentError, match=r"cut.pdf is not a readable PDF \(.+\); is it truncated or damaged"):
        pages_of(cut, dpi=36)


@pytest.mark.skipif(not (CORPUS / "invoice2data").is_dir(), reason=f"the shared corpus is not at {CORPUS}")
def test_a_real_pdf_cut_short_fails_or_renders_real_pages(tmp_path: Path) -> None:
    real = (CORPUS / "invoice2data" / "AmazonWebServices.pdf").read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(real[: len(real) // 3])
    try:
        pages = pages_of(cut, dpi=36)
    except DocumentError as err:
        assert "truncated or damaged" in str(err) or "cannot be rendered" in str(err)
    else:  # MuPDF repaired what it could: then it must still be a real page
        assert pages and pages[0].image.width > 0


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    bomb = make_image(tmp_path / "bomb.png", size=(200, 200))
    with pytest.raises(DocumentError, match="too large to decode safely"):
        pages_of(bomb)


def test_image_conversions(tmp_path: Path) -> None:
    rgba = make_image(tmp_path / "a.png", mode="RGBA", color=(255, 0, 0, 0))
    assert pages_of(rgba)[0].image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    cmyk = make_image(tmp_path / "c.jpg", mode="CMYK", fmt="JPEG", color=(0, 255, 255, 0))
    r, g, b = pages_of(cmyk)[0].image.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60
    grey16 = tmp_path / "g.png"
    Image.frombytes("I;16", (4, 2), bytes(range(16))).save(grey16)
    assert pages_of(grey16)[0].image.mode == "RGB"
    palette = make_image(tmp_path / "p.gif", mode="P", fmt="GIF", color=3)
    assert pages_of(palette)[0].image.mode == "RGB"
    bmp = make_image(tmp_path / "x.bmp", mode="L", fmt="BMP", color=128)
    assert pages_of(bmp)[0].image.getpixel((0, 0)) == (128, 128, 128)
    webp = make_image(tmp_path / "x.webp", fmt="WEBP")
    assert pages_of(webp)[0].image.size == (120, 80)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (120, 80), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    img.save(path, "JPEG", exif=exif)
    assert pages_of(path)[0].image.size == (80, 120)


def test_multi_frame_tiff_is_one_page_per_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "scan.tiff"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    pages = pages_of(path, pages="2-3")
    assert [p.index for p in pages] == [2, 3]
    assert pages[0].image.getpixel((0, 0)) == (0, 255, 0)


def test_large_images_shrink_to_the_budget(tmp_path: Path) -> None:
    big = make_image(tmp_path / "big.png", size=(2000, 1000))
    [page] = pages_of(big, max_pixels=200_000)
    assert page.image.width * page.image.height <= 200_000
    assert abs(page.image.width / page.image.height - 2) < 0.02


def test_pages_beyond_the_end(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "two.pdf", ["a", "b"])
    with pytest.raises(DocumentError, match="selects nothing"):
        pages_of(pdf, pages="5-6")


def test_invoice_pdfs_render_within_the_budget(tmp_path: Path) -> None:
    from tests.documents import Invoice

    pdf = make_pdf(tmp_path / "invoice.pdf", ["\n".join(Invoice().text), "Terms and conditions"], image_page=1)
    pages = pages_of(pdf, max_pixels=300_000)
    assert len(pages) == 2 and all(p.image.width * p.image.height <= 300_000 for p in pages)
    assert pages[0].text is not None and "INVOICE FX-2026-0042" in pages[0].text and pages[0].graphics
    assert pages[1].text == "Terms and conditions" and not pages[1].graphics


@pytest.mark.skipif(not (CORPUS / "invoice2data").is_dir(), reason=f"the shared corpus is not at {CORPUS}")
def test_corpus_pdfs_render(tmp_path: Path) -> None:
    for name in ("AmazonWebServices.pdf", "saeco.pdf"):
        pages = pages_of(CORPUS / "invoice2data" / name, max_pixels=300_000)
        assert pages and all(p.image.width * p.image.height <= 300_000 for p in pages)
        assert any(p.text for p in pages)


def test_stdin_bytes_are_sniffed(tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "x.pdf", ["from a pipe"]).read_bytes()
    with open_document(Source(label="<stdin>", data=data), RasterOptions(dpi=36)) as doc:
        assert doc.kind == "pdf" and next(doc.pages()).text == "from a pipe"
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, "PNG")
    with open_document(Source(label="<stdin>", data=buf.getvalue()), RasterOptions()) as doc:
        assert doc.kind == "image"
