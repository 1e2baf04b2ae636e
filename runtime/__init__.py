"""The runtime every process stands on: settings, the broker session, logs, lifecycle, serving, metrics plumbing.

The bottom layer: it imports nothing of this project (see the layers contract in pyproject.toml).
"""
