"""The operator's tools behind ``flowscribe-ingest dlq ...``, ``reprocess``, ``register`` and the like.

One module per concept: ``dead_letters`` reads the dead-letter queue without
changing it, ``letters`` is what one dead letter's headers say, ``redecode``
decodes one again with this version, ``selection`` chooses messages, ``inspection`` lists and shows,
``replay``, ``purge``, ``transfer`` (export/import) and ``reprocess`` act,
``predict`` says what a message would do in the database, ``messages`` copies
and serialises AMQP messages, ``publish`` paces confirmed publishes,
``register`` registers the callback URL with Flowscribe, ``render`` talks to
the terminal, ``connect`` opens the broker and the database, ``commands`` is the
command line. Every command is an
``async def (settings, args, console) -> int`` (the exit status), so tests
await it in-process; ``flowscribe_ingest.cli`` only wraps it (``commands.main``).
"""
