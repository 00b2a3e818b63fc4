"""Inference backends. Each module imports its heavy dependencies itself, when chosen."""
