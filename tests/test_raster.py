"""Documents -> pages: every input kind, conversions, and every bad-input error."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from llamadoc.errors import DocumentError, UsageError
from llamadoc.inputs.raster import RasterOptions, open_document, parse_pages, select_pages
from llamadoc.inputs.sources import Source
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
        (b"just some text, not a document\n", "is not a document llamadoc reads .*PDF, PNG"),
        (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog", "truncated or damaged"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a damaged PNG image"),
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


def bomb_gif(path: Path, screen: tuple[int, int], offsets: list[tuple[int, int]]) -> Path:
    """A GIF of 4x4 frames on a logical screen of ``screen``, each frame placed at its offset:
    a frame placed far out grows the image when Pillow reaches it, as Pillow's own
    Tests/images/decompression_bomb_extents.gif does on its second frame."""
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF")
    data = buf.getvalue()
    table = 3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0  # the global colour table
    start = 13 + table
    assert data[start:start + 1] == b","  # the image descriptor: x, y, width, height, then the pixels
    head, frame = bytearray(data[:start]), data[start:-1]
    head[:6] = b"GIF89a"
    head[6:10] = struct.pack("<HH", *screen)
    frames = b"".join(frame[:1] + struct.pack("<HH", x, y) + frame[5:] for x, y in offsets)
    path.write_bytes(bytes(head) + frames + b";")
    return path


@pytest.mark.parametrize("screen, offsets", [
    ((65535, 65535), [(0, 0)]),  # the logical screen: refused as the file opens
    ((4, 4), [(0, 0), (65000, 65000)]),  # the second frame's extent: only when that frame is reached
    ((4, 4), [(0, 0), (10_000, 10_000)]),  # 100 million pixels: past the limit, short of twice it
], ids=["logical screen", "second frame", "second frame past the limit"])
def test_a_gif_bomb_is_refused_like_any_other(tmp_path: Path, screen: tuple[int, int],
                                              offsets: list[tuple[int, int]]) -> None:
    bomb = bomb_gif(tmp_path / "bomb.gif", screen, offsets)
    with pytest.raises(DocumentError) as caught:
        pages_of(bomb)
    assert caught.value.message == f"{bomb} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels)"


def test_a_gif_bomb_is_one_line_on_the_command_line(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    bomb = bomb_gif(tmp_path / "bomb.gif", (4, 4), [(0, 0), (65000, 65000)])
    result = run_cli("describe", str(bomb), *model_args, "--max-tokens", "4")
    assert result.exit_code == 1 and "internal error" not in result.stderr
    # Frame 1 was read (and is blank); frame 2 is the page that failed.
    assert result.stderr.splitlines()[-1] == (f"llamadoc: page 2: {bomb} is too large to decode safely (over "
                                              f"{Image.MAX_IMAGE_PIXELS:,} pixels) (downscale it first; this "
                                              "limit guards against decompression bombs)")


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


# -- phone and scanner formats ------------------------------------------------------

def _marked(size: tuple[int, int] = (120, 80)) -> Image.Image:
    """Blue with a red square in the top-left corner: orientation shows where it lands."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 24, 24))
    return img


def _near(pixel: tuple[int, ...], want: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, want, strict=True))


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_photos_are_upright(tmp_path: Path, fmt: str) -> None:
    """A phone photo taken sideways: the orientation (irot for HEIC, EXIF for AVIF) is applied once."""
    import pillow_heif

    pillow_heif.register_heif_opener()  # only to write the file; llamadoc registers it itself
    img = _marked()
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / f"receipt.{fmt.lower()}"
    img.save(path, fmt, exif=exif.tobytes(), quality=90)
    [page] = pages_of(path)
    assert page.image.size == (80, 120)
    assert _near(page.image.getpixel((75, 4)), (255, 0, 0))  # the red corner went top-right
    assert _near(page.image.getpixel((4, 4)), (0, 0, 255))


def test_heic_with_alpha_is_flattened_on_white(tmp_path: Path) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((0, 160, 0, 255), (0, 0, 32, 64))
    path = tmp_path / "cut-out.heic"
    img.save(path, "HEIF", quality=95)
    [page] = pages_of(path)
    assert page.image.mode == "RGB"
    assert _near(page.image.getpixel((50, 30)), (255, 255, 255))
    assert _near(page.image.getpixel((10, 30)), (0, 160, 0), tolerance=20)


@pytest.mark.parametrize("suffix", [".jp2", ".j2k"])
def test_jpeg_2000(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"archive{suffix}"
    _marked().save(path, "JPEG2000", irreversible=False)  # lossless: exact pixels
    [page] = pages_of(path)
    assert page.image.size == (120, 80)
    assert page.image.getpixel((5, 5)) == (255, 0, 0) and page.image.getpixel((100, 70)) == (0, 0, 255)


def test_pnm_as_scanimage_writes_it(tmp_path: Path) -> None:
    colour = tmp_path / "scan.ppm"
    _marked().save(colour)
    assert colour.read_bytes().startswith(b"P6")
    assert pages_of(colour)[0].image.getpixel((5, 5)) == (255, 0, 0)
    grey = tmp_path / "scan.pgm"
    Image.new("L", (40, 30), 90).save(grey)
    assert pages_of(grey)[0].image.getpixel((3, 3)) == (90, 90, 90)
    line_art = tmp_path / "scan.pbm"
    bits = Image.new("1", (40, 30), 1)
    bits.paste(0, (0, 0, 20, 30))
    bits.save(line_art)
    page = pages_of(line_art)[0].image
    assert page.getpixel((5, 5)) == (0, 0, 0) and page.getpixel((30, 5)) == (255, 255, 255)
    deep = tmp_path / "scan16.pgm"  # 16-bit, as scanimage --depth 16 writes it
    ramp = Image.new("I;16", (64, 8))
    ramp.putdata([x * 1000 for _y in range(8) for x in range(64)])
    ramp.save(deep)
    assert deep.read_bytes().startswith(b"P5\n64 8\n65535")
    image = pages_of(deep)[0].image
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((32, 0))[0] in range(125, 135) and image.getpixel((63, 0))[0] >= 250  # the range stretched


def test_bigtiff_with_several_pages(tmp_path: Path) -> None:
    frames = [_marked(), Image.new("RGB", (120, 80), (0, 200, 0))]
    path = tmp_path / "large-scan.tif"
    frames[0].save(path, big_tiff=True, save_all=True, append_images=frames[1:])
    assert path.read_bytes()[:4] == b"II+\x00"
    pages = pages_of(path)
    assert [p.index for p in pages] == [1, 2]
    assert pages[0].image.getpixel((5, 5)) == (255, 0, 0) and pages[1].image.getpixel((5, 5)) == (0, 200, 0)


@pytest.mark.parametrize("compression", ["jpeg", "tiff_lzw", "group4"])
def test_multi_page_tiff_compressions(tmp_path: Path, compression: str) -> None:
    """What office scanners write: JPEG or LZW colour pages, CCITT G4 for black and white."""
    if compression == "group4":
        frames = [Image.new("1", (64, 48), 1) for _ in range(3)]
        for i, frame in enumerate(frames):
            frame.paste(0, (0, 0, 16 * (i + 1), 48))
    else:
        frames = [Image.new("RGB", (64, 48), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    path = tmp_path / f"scan-{compression}.tif"
    frames[0].save(path, compression=compression, save_all=True, append_images=frames[1:])
    pages = pages_of(path)
    assert [p.index for p in pages] == [1, 2, 3]
    for i, page in enumerate(pages):
        if compression == "group4":
            assert page.image.getpixel((16 * (i + 1) - 2, 5)) == (0, 0, 0)
            assert page.image.getpixel((16 * (i + 1) + 2, 5)) == (255, 255, 255)
        else:
            assert _near(page.image.getpixel((30, 20)), frames[i].getpixel((30, 20)))


def test_a_phone_jpeg_with_a_second_view_is_one_page(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _marked().save(path, "MPO", save_all=True, append_images=[Image.new("RGB", (30, 20))])
    with open_document(Source(label="photo.jpg", path=path), RasterOptions()) as doc:
        assert doc.page_count == 1 and next(doc.pages()).image.size == (120, 80)


@pytest.mark.parametrize(("fmt", "name"), [("ICO", "ICO"), ("PCX", "PCX"), ("TGA", "TGA")])
def test_formats_pillow_knows_but_llamadoc_does_not_read(tmp_path: Path, fmt: str, name: str) -> None:
    path = tmp_path / "odd.bin"
    _marked((32, 32)).save(path, fmt)
    with pytest.raises(DocumentError) as err:
        pages_of(path)
    assert f"odd.bin: {name} is not supported (llamadoc reads PDF, PNG, JPEG" in str(err.value)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG", "HEIF", "PNG", "JPEG2000"])
def test_damaged_images_say_what_is_damaged(tmp_path: Path, fmt: str) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    whole = io.BytesIO()
    _marked((300, 200)).save(whole, fmt)
    path = tmp_path / "cut.img"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    named = {"HEIF": "HEIF", "JPEG2000": "JPEG 2000"}.get(fmt, fmt)
    with pytest.raises(DocumentError, match=f"cut.img is a damaged {named} image \\(") as err:
        pages_of(path)
    assert "<_io" not in str(err.value) and "object at 0x" not in str(err.value) and "\n" not in str(err.value)


def test_a_broken_tiff_header_says_so(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + (0xFFFFFF).to_bytes(4, "little") + b"\x00" * 64)  # IFD offset past the end
    with pytest.raises(DocumentError, match=r"broken.tif is a damaged TIFF image \(") as err:
        pages_of(path)
    assert "<_io" not in str(err.value)


_TREE = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n{body}\ntrailer << /Root 1 0 R >>\n%%EOF"


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
         b"3 0 obj << /Type /Pages /Kids [2 0 R] /Count 1 /Parent 2 0 R >> endobj",
         r"page 1 of .*cyclic.pdf cannot be read: damaged PDF \(cycle in page tree\)"),
        (b"2 0 obj << /Type /Pages /Kids [2 0 R 2 0 R] /Count 5 >> endobj",
         r"cyclic.pdf is a damaged PDF \(Invalid number of pages\)"),
        (b"2 0 obj << /Type /Pages /Count 3 >> endobj", r"cyclic.pdf is a damaged PDF \(Invalid number of pages\)"),
    ],
    ids=["cycle", "cycle-with-a-count", "no-kids"],
)
def test_damaged_page_trees(tmp_path: Path, capfd: pytest.CaptureFixture[str], tree: bytes, message: str) -> None:
    path = tmp_path / "cyclic.pdf"
    path.write_bytes(_TREE.replace(b"{body}", tree))
    with pytest.raises(DocumentError, match=message):
        pages_of(path)
    assert capfd.readouterr().err == ""  # MuPDF's own lines stay quiet: ours is the one line


def test_a_container_made_into_a_source_by_hand_says_what_it_is(tmp_path: Path) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.pdf", make_pdf(tmp_path / "a.pdf", ["a"]).read_bytes())
    with pytest.raises(DocumentError, match="upload.zip is a ZIP: its attachments or members are the documents"):
        open_document(Source(label="upload.zip", data=buf.getvalue()), RasterOptions())
