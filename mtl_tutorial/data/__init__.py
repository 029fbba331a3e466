"""Data for the course: the shipped real text tasks, synthetic tasks, and multi-task loaders."""
