"""The worker process: consume callback messages, land them in PostgreSQL, ack after commit."""

# The settings (runtime.settings.Settings fields) the worker process reads: its
# --help lists them with their defaults; tests/test_cli.py checks this against the code.
SETTINGS_READ = (
    "amqp_url", "database_url", "batch_size", "batch_wait", "prefetch", "worker_max_held_bytes",
    "worker_max_held_rows", "max_body_bytes", "max_attempts",
    "database_retry_max_delay", "publish_timeout", "worker_http_host", "worker_http_port", "drift_sample_rate",
    "shutdown_timeout", "log_format", "log_level", "event_loop",
)
