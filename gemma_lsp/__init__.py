"""gemma-lsp: private, offline code completion with lossless speculative decoding."""

import os as _os

# Offline, before anything imports huggingface_hub or transformers: both read these once,
# at import, so setting them later (e.g. where models are loaded) would be too late.
# Forced, not defaulted: gemma-lsp never touches the network, whatever the environment says.
_os.environ["HF_HUB_OFFLINE"] = "1"
_os.environ["TRANSFORMERS_OFFLINE"] = "1"
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
