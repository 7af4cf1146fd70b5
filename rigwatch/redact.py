"""Credentials out of URLs before they are logged or reported.

A source URL may carry a password (`http://user:pass@prometheus:9090`) or a token in its query
string (`?token=...`); rigwatch's log lines go to the journal and on to Loki, and backtest reports
get shared, so every URL that is printed passes through here first:

    redact_url("http://user:pass@host:9090/x?token=abc&q=1") == "http://user:***@host:9090/x?token=***&q=1"

A user name alone (`http://TOKEN@host`) is treated as a secret too: services that take a token put
it there. `redact_text` does the same to every URL inside free text (exception messages that embed
the URL, e.g. from requests/urllib3) and to `?token=`-style parameters of a path without a host.
"""
from __future__ import annotations

import re

MASK = "***"
# query parameters whose value is a secret (lower-cased names; a name containing one of the
# first group counts: access_token, x-api-key...)
_SECRET_PARAM = re.compile(
    r"([?&;](?:[\w.-]*(?:token|password|passwd|secret|api[_-]?key|apikey|credential)[\w.-]*"
    r"|pwd|pass|key|auth|sig|signature)=)[^&;#\s'\"<>]*",
    re.IGNORECASE)
# scheme://netloc..., up to whitespace, a quote or a bracket that ends the URL in prose
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` with the password (or a lone user name) of its userinfo and secret query values replaced
    by ***; anything else, non-URLs included, as it was."""
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    if sep:
        end = len(rest)
        for ch in "/?#":
            i = rest.find(ch)
            if i != -1:
                end = min(end, i)
        netloc, tail = rest[:end], rest[end:]
        userinfo, at, host = netloc.rpartition("@")  # a password may hold an unescaped '@'
        if at:
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
        url = f"{scheme}://{netloc}{tail}"
    return _SECRET_PARAM.sub(rf"\1{MASK}", url)


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted, and secret query parameters of host-less paths
    (`... with url: /api/v1/query?token=abc`) too."""
    if not isinstance(text, str):
        return text
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _SECRET_PARAM.sub(rf"\1{MASK}", text)
