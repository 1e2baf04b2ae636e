"""The callback gateway: authenticate, bound, publish confirmed, then answer 202."""
