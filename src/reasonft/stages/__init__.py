"""The pipeline's stages, one class per file; the `pipeline` config group lists them in order."""
