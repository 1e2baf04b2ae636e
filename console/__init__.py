"""The operator's console: the ledger, the dead letters, replay and reprocess with a preview, in a browser.

A top-layer part beside ops, gateway and worker: it reads the store and the
queues itself, and every action (replay, purge, export, reprocess) runs the
very code of the ``dlq`` and ``reprocess`` commands (``ops``), with their
guarantees. Nothing below imports it.
"""
