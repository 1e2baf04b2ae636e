"""The gateway's URL paths, named once (routes, log redaction, the OpenAPI description).

The probes' paths are every process's (runtime.probes); the callback path is the gateway's own.
"""

from runtime.probes import HEALTH_PATH, METRICS_PATH, READY_PATH

__all__ = ["CALLBACK_PATH", "HEALTH_PATH", "METRICS_PATH", "OPENAPI_PATH", "READY_PATH"]

CALLBACK_PATH = "/flowscribe/callback"  # + "/{token}": the token is the credential
OPENAPI_PATH = "/openapi.yaml"
