"""llamadoc: read documents with local vision models on llama.cpp's engine."""

__version__ = "0.1.0"
