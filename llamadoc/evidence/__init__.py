"""The checks that need no model: grounding and arithmetic of extracted fields, blank pages and runaway answers."""
