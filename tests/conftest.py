"""Shared pytest set-up: fixture notebooks are inputs of CLI tests, not chapters for nbval."""

collect_ignore_glob = ["fixtures/*"]
