"""Offline benchmarks that measure completion quality the way an editor sees it."""
