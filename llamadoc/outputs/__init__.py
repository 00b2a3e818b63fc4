"""Where a result goes: rendering (text, JSON, JSONL, Markdown), the -o writer and its claims, the batch report."""
