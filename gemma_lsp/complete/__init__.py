"""Text in, text out: a document snapshot becomes a prompt of token ids, a backend runs it,
and the generated text is cleaned up. Shared by the server and `gemma-lsp complete`."""
