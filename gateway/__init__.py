"""The callback gateway: authenticate, bound, publish confirmed, then answer 202."""

# The settings (runtime.settings.Settings fields) the gateway process reads: its
# --help lists them with their defaults; tests/test_cli.py checks this against the code.
SETTINGS_READ = (
    "callback_tokens", "signing_secrets", "signature_tolerance",
    "gateway_host", "gateway_port", "gateway_processes",
    "allowed_networks", "trusted_proxies", "rate_limit", "rate_burst",
    "max_body_bytes", "max_inflight_bytes", "body_read_timeout", "header_read_timeout",
    "amqp_url", "publish_timeout", "publish_hold_seconds", "retry_after", "shutdown_timeout", "log_format", "log_level",
)
