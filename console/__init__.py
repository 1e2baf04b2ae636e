"""The operator's console: the ledger, the dead letters, replay and reprocess with a preview, in a browser.

A top-layer part beside ops, gateway and worker: it reads the store and the
queues itself, and every action (replay, purge, export, reprocess) runs the
very code of the ``dlq`` and ``reprocess`` commands (``ops``), with their
guarantees. Nothing below imports it.
"""

# The settings (runtime.settings.Settings fields) the console process reads, the ops
# commands it runs included: its --help lists them (tests/test_cli.py checks the list).
SETTINGS_READ = (
    "amqp_url", "database_url", "publish_timeout", "console_host", "console_port", "console_tokens",
    "console_user_header", "console_operators", "trusted_proxies", "shutdown_timeout", "log_format", "log_level",
)
