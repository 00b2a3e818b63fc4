"""Llama 3.2 Vision ("mllama") on ggml, which llama.cpp itself does not run."""
