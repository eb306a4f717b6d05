"""Names shared by the settings and the engine (kept free of heavy imports)."""

# "auto" asks the cheapest drafters first: suggestion, ngram, retrieval (when a corpus is
# loaded), then the Gemma 4 assistant or a draft model (when one is loaded).
DRAFTERS = ("auto", "none", "ngram", "suggestion", "retrieval", "model", "gemma4-assistant")
