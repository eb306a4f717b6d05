"""The editor's side: LSP wiring, one handler per method, documents with exact positions,
the scheduler, counters. The only layer that imports pygls (ARCHITECTURE.md, layers)."""
