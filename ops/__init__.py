"""The operator's tools behind ``flowscribe-ingest dlq ...`` and ``flowscribe-ingest reprocess``.

One module per concept: ``dead_letters`` reads the dead-letter queue without
changing it, ``selection`` chooses messages, ``inspection`` lists and shows,
``replay``, ``purge``, ``transfer`` (export/import) and ``reprocess`` act,
``predict`` says what a message would do in the database, ``messages`` copies
and serialises AMQP messages, ``publish`` publishes with confirms at a bounded
rate, ``render`` talks to the terminal, ``connect`` opens the broker and the
database, ``commands`` is the command line. Every command is an
``async def (settings, args, console) -> int`` (the exit status), so tests
await it in-process; ``flowscribe_ingest.cli`` only wraps it.
"""
