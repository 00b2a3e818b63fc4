"""The run over pages: the pipeline, the work ahead of the model (prefetch) and the options of a run."""
