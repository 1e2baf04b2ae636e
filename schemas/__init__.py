"""Contracts shared by the gateway and the worker: payload, topology, migrations."""
