"""Names shared by the settings and the engine (kept free of heavy imports)."""

# "auto" asks the cheapest drafters first: suggestion, ngram, then a model if one is loaded.
DRAFTERS = ("auto", "none", "ngram", "suggestion", "retrieval", "model", "gemma4-assistant")
