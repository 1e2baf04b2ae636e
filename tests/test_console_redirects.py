"""Where a login sends the browser next: only ever a path on the console, decided as a browser resolves URLs.

The browser test (tests/test_console_browser.py, TestRedirects) asks Chromium's own URL parser about the same
cases; these check the decision itself, and that it holds for any string.
"""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from console.redirects import HOME, local_target

ORIGIN = "https://console.example"

# Each of these is another site once a browser has parsed it (or could be, echoed back as a redirect).
ELSEWHERE = [
    "/\t/evil.example/",  # the reported one: the tab is removed, //evil.example remains
    "/\n/evil.example/",
    "/\r/evil.example/",
    "/\r\n/evil.example/",
    "\t//evil.example/",
    " //evil.example/",  # leading spaces and control characters are trimmed
    "\x00//evil.example/",
    "\x1f//evil.example/",
    "//evil.example/",
    "///evil.example/",
    "/\\evil.example/",  # a backslash is a slash in http(s) URLs
    "\\\\evil.example/",
    "\\/evil.example/",
    "/\\\t/evil.example",
    "/.//evil.example/",  # dot segments: a path here, //evil.example once resolved
    "/./\t/evil.example/",
    "/%2e//evil.example/",
    "/%2E//evil.example/",
    "/a/..//evil.example/",
    "/a/%2e%2e//evil.example/",
    "/a/.%2E//evil.example/",
    "/../..//evil.example/",
    "https://evil.example/",
    "http:evil.example",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
    "",
]

# Paths on this console, kept as they resolve (unicode lookalikes of a slash are not slashes: encoded).
HERE = {
    "/": "/",
    "/callbacks": "/callbacks",
    "/callbacks?since=2h&outcome=ingested": "/callbacks?since=2h&outcome=ingested",
    "/dead-letters?reason=bad json": "/dead-letters?reason=bad%20json",
    "/%2F/evil.example/": "/%2F/evil.example/",  # an encoded slash stays one path segment
    "/%2f%2fevil.example": "/%2f%2fevil.example",
    "/\uff0fevil.example": "/%EF%BC%8Fevil.example",  # fullwidth solidus
    "/\u2215evil.example": "/%E2%88%95evil.example",  # division slash
    "/\u2044evil.example": "/%E2%81%84evil.example",  # fraction slash
    "/\uff3cevil.example": "/%EF%BC%BCevil.example",  # fullwidth reverse solidus
    "/\u3002evil.example": "/%E3%80%82evil.example",  # ideographic full stop
    "/./callbacks": "/callbacks",
    "/a/../callbacks": "/callbacks",
    "/callbacks\t": "/callbacks",
    "/call\nbacks": "/callbacks",
    "/jobs\\x": "/jobs/x",
    "/x\x01y": "/x%01y",
    "/callbacks#//evil.example": "/callbacks",
    "/callbacks?next=//evil.example": "/callbacks?next=//evil.example",  # a query is not a host
}


def resolved_origin(target: str) -> str:
    parts = urllib.parse.urlsplit(urllib.parse.urljoin(ORIGIN + "/login", target))
    return f"{parts.scheme}://{parts.netloc}"


@pytest.mark.parametrize("value", ELSEWHERE)
def test_anything_that_resolves_elsewhere_goes_home(value):
    assert local_target(value) == HOME


@pytest.mark.parametrize(("value", "expected"), HERE.items())
def test_a_path_here_is_kept_as_it_resolves(value, expected):
    assert local_target(value) == expected


def test_not_a_string_goes_home():
    assert local_target(None) == HOME
    assert local_target(b"/callbacks") == HOME


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(),
    # Strings built from the characters that matter to a URL parser, so that odd mixes come up often.
    st.lists(st.sampled_from(["/", "\\", "\t", "\n", "\r", " ", "\x00", ".", "%2e", "%2f", "?", "#", ":", "@",
                              "evil.example", "\uff0f", "a", ".."]), max_size=12).map("".join),
))
def test_any_string_ends_on_this_origin_as_a_plain_path(value):
    target = local_target(value)
    assert target.startswith("/") and not target.startswith("//")
    assert target.isascii() and target.isprintable() and " " not in target  # nothing left to reinterpret
    assert "\\" not in target
    assert resolved_origin(target) == ORIGIN
    assert local_target(target) == target  # deciding again changes nothing
