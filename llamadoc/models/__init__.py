"""The Models seam: where a Reader's engines and guard come from (this machine, or a running `llamadoc serve`)."""
