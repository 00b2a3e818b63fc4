"""models.toml and the environment -> Settings: what is read, and how mistakes are reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamadoc.config import HfRef, HfRepoRef, OllamaRef, load_settings, parse_source
from llamadoc.errors import ConfigError, ExitCode

ENGINES = {"mtmd", "mllama", "llama"}


def settings_with(tmp_path: Path, text: str, **env: str):
    config = tmp_path / "models.toml"
    config.write_text(text)
    return load_settings(config, {"LLAMADOC_HOME": str(tmp_path / "home"), **env})


def config_error(tmp_path: Path, text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, text, **env)
    assert caught.value.exit_code == ExitCode.USAGE
    return str(caught.value)


def test_the_shipped_registry_has_the_mission_models_with_their_facts(tmp_path):
    settings = load_settings(None, {"LLAMADOC_HOME": str(tmp_path)})
    assert settings.default_vision == "llama3.2-vision:11b"
    assert settings.default_guard == "llama-guard3:1b"
    expected = {
        "llama3.2-vision:11b": ("mllama", "vision"),
        "llama3.2-vision:90b": ("mllama", "vision"),
        "llama-guard3:1b": ("llama", "guard"),
        "llama-guard3:11b-vision": ("mllama", "vision-guard"),
    }
    meta = {
        "llama3.2-vision:11b": "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "llama3.2-vision:90b": "meta-llama/Llama-3.2-90B-Vision-Instruct",
        "llama-guard3:11b-vision": "meta-llama/Llama-Guard-3-11B-Vision",
    }
    for name, (engine, kind) in expected.items():
        spec = settings.model(name)
        assert (spec.engine, spec.kind) == (engine, kind)
        if name != "llama-guard3:11b-vision":  # Ollama's library has no vision guard: only Meta's checkpoint
            assert spec.file("model").ref == OllamaRef("library", *name.split(":"))
        if name in meta:  # Meta's checkpoint, converted on pull, as the last (or only) source
            assert spec.origins[-1].name == "meta"
            assert spec.origins[-1].files[0].ref == HfRepoRef(meta[name])
    for spec in settings.models.values():
        assert spec.engine in ENGINES
        assert spec.quantisation and spec.size_bytes and spec.context and spec.min_memory_gb, spec.name
        if spec.engine == "mtmd":
            assert isinstance(spec.file("model").ref, HfRef) and isinstance(spec.file("mmproj").ref, HfRef)


@pytest.mark.parametrize(
    ("source", "ref"),
    [
        ("hf://owner/repo/dir/file.gguf", HfRef("owner/repo", "dir/file.gguf")),
        ("hf://owner/repo@abc123/file.gguf", HfRef("owner/repo", "file.gguf", "abc123")),
        ("ollama://library/llama3.2-vision:11b", OllamaRef("library", "llama3.2-vision", "11b")),
        ("ollama://llama-guard3", OllamaRef("library", "llama-guard3", "latest")),
        ("ollama://someone/model:q8", OllamaRef("someone", "model", "q8")),
    ],
)
def test_sources_parse_to_typed_references(source, ref):
    assert parse_source(source) == ref
    assert parse_source(str(ref)) == ref


@pytest.mark.parametrize("source", ["hf://owner/file.gguf", "ollama://bad name:1b", "s3://bucket/key"])
def test_a_bad_source_is_reported_with_file_and_key(tmp_path, source):
    message = config_error(tmp_path, f'[models.x]\nengine = "mllama"\nfiles.model = "{source}"\n')
    assert str(tmp_path / "models.toml") in message
    assert "models.x.files.model.source" in message


def test_an_unknown_key_is_reported_with_file_key_and_a_suggestion(tmp_path):
    message = config_error(tmp_path, '[models."qwen2.5-vl:7b"]\nquantization = "Q8_0"\n')
    assert str(tmp_path / "models.toml") in message
    assert "models.qwen2.5-vl:7b.quantization" in message
    assert "did you mean 'quantisation'?" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[models."qwen2.5-vl:7b"]\ncontext = "long"\n', "context must be an integer, not a string"),
        ('[models."qwen2.5-vl:7b"]\nsize_bytes = -1\n', "size_bytes must be positive"),
        ('[models."qwen2.5-vl:7b"]\nengine = "vllm"\n', "engine must be one of"),
        ('[models.x]\nengine = "mtmd"\nfiles.model = "hf://a/b/c.gguf"\n', "needs files.mmproj"),
        ('[models.x]\nengine = "mllama"\n', "has no files.model"),
        ('[models.x]\nengine = "llama"\nfiles.model = { source = "hf://a/b/c.gguf", sha256 = "abc" }\n',
         "sha256 must be 64 hex digits"),
        ('[models.x]\nengine = "mllama"\nfiles.model = { source = "ollama://x:1b", sha256 = "' + "a" * 64 + '" }\n',
         "does not apply to an Ollama source"),
        ('[defaults]\nvision = "nope"\n', "defaults.vision names unknown model 'nope'"),
        ('[defaults]\nguard = "qwen2.5-vl:7b"\n', "a vision model"),
        ('[models."./x.gguf"]\nengine = "llama"\n', "is not allowed"),
        ("[models\n", "not valid TOML"),
    ],
)
def test_bad_values_are_reported_with_the_file(tmp_path, text, words):
    message = config_error(tmp_path, text)
    assert str(tmp_path / "models.toml") in message
    assert words in message


def test_a_user_file_adds_models_and_overrides_keys_of_shipped_ones(tmp_path):
    settings = settings_with(
        tmp_path,
        '[defaults]\nvision = "mine"\n'
        '[models.mine]\nengine = "mllama"\nfiles.model = "weights/mine.gguf"\n'
        '[models."qwen2.5-vl:7b"]\nmax_pixels = 1000\n',
    )
    assert settings.default_vision == "mine"
    # A relative path means: beside the file that names it.
    assert settings.model("mine").file("model").ref == tmp_path / "weights" / "mine.gguf"
    qwen = settings.model("qwen2.5-vl:7b")
    assert qwen.max_pixels == 1000
    assert qwen.quantisation == "Q4_K_M" and qwen.file("mmproj") is not None


def test_the_user_file_in_llamadoc_home_is_read_without_config(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models.toml").write_text('[models.mine]\nengine = "mllama"\nfiles.model = "/m.gguf"\n')
    assert "mine" in load_settings(None, {"LLAMADOC_HOME": str(home)}).models


def test_a_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", {"LLAMADOC_HOME": str(tmp_path)})


def test_environment_variables(tmp_path):
    settings = load_settings(None, {
        "LLAMADOC_HOME": str(tmp_path),
        "LLAMADOC_OLLAMA_REGISTRY": "http://127.0.0.1:9/",
        "HF_ENDPOINT": "https://mirror.example/",
        "HF_TOKEN": "hf_x",
        "HF_HOME": str(tmp_path / "hf"),
        "OLLAMA_MODELS": str(tmp_path / "ollama"),
    })
    assert settings.home == tmp_path and settings.models_dir == tmp_path / "models"
    assert settings.ollama_registry == "http://127.0.0.1:9"
    assert settings.hf_endpoint == "https://mirror.example"
    assert settings.hf_token == "hf_x"
    assert settings.hf_cache == tmp_path / "hf" / "hub"
    assert settings.ollama_stores == (tmp_path / "ollama",)
    assert not settings.offline


@pytest.mark.parametrize(
    ("env", "offline"),
    [({"LLAMADOC_OFFLINE": "1"}, True), ({"LLAMADOC_OFFLINE": "0"}, False), ({"HF_HUB_OFFLINE": "ON"}, True),
     ({"HF_HUB_OFFLINE": "0"}, False), ({}, False)],
)
def test_offline_mode_follows_both_variables(tmp_path, env, offline):
    assert load_settings(None, {"LLAMADOC_HOME": str(tmp_path), **env}).offline is offline


@pytest.mark.parametrize(
    ("name", "value"),
    [("LLAMADOC_OFFLINE", "maybe"), ("LLAMADOC_OLLAMA_REGISTRY", "registry.ollama.ai"), ("HF_ENDPOINT", "ftp://x")],
)
def test_a_bad_variable_is_named(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings(None, {"LLAMADOC_HOME": str(tmp_path), name: value})
