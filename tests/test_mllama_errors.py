"""Bad input to the mllama engine ends in one-line llamadoc errors naming the file and the problem.

Each load runs in a child process: were a check missing, a ggml abort must not take pytest down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mllama_helpers import FIXTURES, convert_fixture, engine_error, rewrite_gguf

pytest.importorskip("llama_cpp")

LOAD = "from llamadoc.engines.mllama.model import MllamaModel\nMllamaModel.load(sys.argv[1], threads=1).close()"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fixture("tiny", tmp_path_factory.mktemp("bad") / "tiny.gguf", "F16")


def load_error(path: Path) -> str:
    return engine_error(LOAD, str(path))


def test_the_good_file_loads(good: Path) -> None:
    assert load_error(good) == "ok"


def test_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"this is not a model at all" * 10)
    msg = load_error(path)
    assert msg.startswith("ModelError: ") and str(path) in msg and "not a valid GGUF file" in msg


def test_missing_file(tmp_path: Path) -> None:
    msg = load_error(tmp_path / "absent.gguf")
    assert msg.startswith("ModelError: ") and "absent.gguf: no such model file" in msg


def test_other_architecture(good: Path, tmp_path: Path) -> None:
    path = rewrite_gguf(good, tmp_path / "llama.gguf", metadata={"general.architecture": "llama"})
    msg = load_error(path)
    assert msg == f"ModelError: {path}: not a Llama 3.2 Vision (mllama) model (architecture 'llama')"


def test_truncated_file(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    msg = load_error(path)
    assert msg.startswith(f"ModelError: {path}: truncated file")


def test_missing_tensor(good: Path, tmp_path: Path) -> None:
    path = rewrite_gguf(good, tmp_path / "holes.gguf", drop=("blk.1.cross_attn_k_norm.weight",))
    assert load_error(path) == f"ModelError: {path}: tensor blk.1.cross_attn_k_norm.weight is missing"


def test_wrong_shape(good: Path, tmp_path: Path) -> None:
    path = rewrite_gguf(good, tmp_path / "twisted.gguf", reshape={"blk.0.attn_q.weight": (32, 128)})
    assert load_error(path) == f"ModelError: {path}: tensor blk.0.attn_q.weight has shape [32, 128], expected [64, 64]"


def test_inconsistent_metadata(good: Path, tmp_path: Path) -> None:
    path = rewrite_gguf(good, tmp_path / "meta.gguf", metadata={"mllama.attention.cross_attention_layers": [1, 9]})
    msg = load_error(path)
    assert msg.startswith(f"ModelError: {path}: inconsistent hyperparameters: cross-attention layers [1, 9]")


@pytest.mark.parametrize("data,why", [(b"definitely not an image", "cannot decode the image"),
                                      (None, "cannot decode the image")])
def test_undecodable_image(good: Path, tmp_path: Path, data: bytes | None, why: str) -> None:
    image = tmp_path / "page.png"
    if data is None:  # a real PNG cut in half
        from PIL import Image

        Image.new("RGB", (64, 64), "white").save(image)
        data = image.read_bytes()[:40]
    image.write_bytes(data)
    code = ("from llamadoc.engines.mllama.model import MllamaModel\n"
            "m = MllamaModel.load(sys.argv[1], threads=1)\nm.preprocess(sys.argv[2])")
    msg = engine_error(code, str(good), str(image))
    assert msg.startswith(f"DocumentError: {image}: {why}")


def test_converter_rejects_other_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    code = "from llamadoc.engines.mllama.convert import convert\nconvert(sys.argv[1], sys.argv[2])"
    msg = engine_error(code, str(tmp_path), str(tmp_path / "out.gguf"))
    config = tmp_path / "config.json"
    assert msg == f"ModelError: {config}: not a Llama 3.2 Vision (mllama) checkpoint (model_type 'llama')"
    assert not (tmp_path / "out.gguf").exists()


def test_converter_rejects_unknown_quantisation(tmp_path: Path) -> None:
    code = "from llamadoc.engines.mllama.convert import convert\nconvert(sys.argv[1], sys.argv[2], 'Q3_XL')"
    msg = engine_error(code, str(FIXTURES / "tiny" / "checkpoint"), str(tmp_path / "out.gguf"))
    assert msg == "UsageError: unknown quantisation 'Q3_XL'; choose one of F32, F16, Q8_0, Q4_K_M"


def test_other_llama_cpp_python_versions_are_refused() -> None:
    code = ("import importlib.metadata as md\nmd.version = lambda name: '0.3.99'\n"
            "import llamadoc.engines.mllama.ggml")
    msg = engine_error(code)
    assert msg == ("EngineError: llama-cpp-python 0.3.99 is installed; the mllama engine needs exactly 0.3.36 "
                   "(install llama-cpp-python==0.3.36, the build this engine's ggml bindings match)")
