"""Datasets (registry, toys, files) and the resumable, sharded batch sources that feed the step."""
