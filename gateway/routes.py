"""The gateway's URL paths, named once (routes, log redaction, the OpenAPI description)."""

CALLBACK_PATH = "/flowscribe/callback"  # + "/{token}": the token is the credential
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"  # Prometheus; keep it off the public side of a reverse proxy
OPENAPI_PATH = "/openapi.yaml"
