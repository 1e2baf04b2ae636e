"""Vendor field names to database column names."""

import re

# Boundaries: "aB" (lower/digit then upper) and "ABc" (acronym then a word).
_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``Score_Performance`` -> ``score_performance``, ``SpeakerTypeID`` -> ``speaker_type_id``."""
    return re.sub(r"_+", "_", _BOUNDARY.sub("_", name)).lower()
