"""Shared fixtures: tiny generated models, documents made on the spot, an isolated home."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import tinymodels

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own LLAMADOC_HOME and never reaches the network."""
    home = tmp_path / "home"
    monkeypatch.setenv("LLAMADOC_HOME", str(home))
    monkeypatch.setenv("LLAMADOC_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def text_model(models_dir: Path) -> Path:
    return tinymodels.write_text_model(models_dir / "tiny-chat.gguf")


@pytest.fixture(scope="session")
def mmproj(models_dir: Path) -> Path:
    return tinymodels.write_mmproj(models_dir / "mmproj-mlp.gguf", "mlp")


@pytest.fixture(scope="session")
def mmproj_gemma3(models_dir: Path) -> Path:
    return tinymodels.write_mmproj(models_dir / "mmproj-gemma3.gguf", "gemma3")


@pytest.fixture(scope="session")
def model_args(text_model: Path, mmproj: Path) -> list[str]:
    """CLI arguments that select the tiny model; one thread keeps runs steady on 2 cores."""
    return ["--model", str(text_model), "--mmproj", str(mmproj), "--threads", "1", "--guard", "off"]


@pytest.fixture(scope="session")
def guard_model(models_dir: Path) -> Path:
    return tinymodels.write_guard_model(models_dir / "tiny-guard.gguf")


@pytest.fixture
def run_cli() -> Callable[..., object]:
    """Run the real CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from llamadoc.cli.app import app

    def run(*args: str, stdin: bytes | None = None) -> object:
        runner = CliRunner()
        return runner.invoke(app, list(args), input=stdin, catch_exceptions=False)

    return run


# -- documents made on the spot ------------------------------------------------


def make_pdf(path: Path, pages: list[str], *, rotate: dict[int, int] | None = None,
             password: str | None = None, image_page: int | None = None) -> Path:
    import pymupdf
    from PIL import Image

    doc = pymupdf.open()
    for i, text in enumerate(pages, start=1):
        page = doc.new_page(width=595, height=842)  # A4 in points
        page.insert_text((72, 100), text, fontsize=14)
        if image_page == i:
            buf = io.BytesIO()
            Image.new("RGB", (60, 40), (30, 120, 200)).save(buf, "PNG")
            page.insert_image(pymupdf.Rect(72, 200, 272, 333), stream=buf.getvalue())
        if rotate and i in rotate:
            page.set_rotation(rotate[i])
    if password:
        doc.save(str(path), encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw=password + "!")
    else:
        doc.save(str(path))
    doc.close()
    return path


def make_image(path: Path, size: tuple[int, int] = (120, 80), mode: str = "RGB", fmt: str = "PNG",
               color: object = (200, 40, 40), **save: object) -> Path:
    """An image of one colour; RGB ones get a few dark bars in the middle, like a chart,
    so that they are not blank pages (which never reach the model)."""
    from PIL import Image, ImageDraw

    img = Image.new(mode, size, color)  # type: ignore[arg-type]
    if mode == "RGB" and min(size) >= 20:
        draw = ImageDraw.Draw(img)
        w, h = size
        for i in range(4):
            x = w // 4 + i * w // 10
            draw.rectangle((x, h // 3 + i * h // 12, x + w // 20, 2 * h // 3), fill=(10, 10, 10))
    img.save(path, fmt, **save)  # type: ignore[arg-type]
    return path


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    return make_image(tmp_path / "chart.png")


def parse_json(text: str) -> dict[str, object]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
