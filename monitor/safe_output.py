"""Event-derived text made safe for where it is shown: HTML, Markdown, links, JSON that a
receiver may paste into a page, and plain text.

Every string an event carries (site, manufacturer, scanner model, software version, view,
tags, finding, ...) is attacker-controlled from the point of view of whoever reads a report,
a dashboard or a notification. The functions here are the only way such a value reaches
those outputs: ``visible`` drops the characters that change how text around them reads
(controls, bidirectional overrides, zero-width characters); the others then escape for
their context.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

SAFE_LINK_SCHEMES = frozenset({"http", "https"})
# What can start markup inside a line of Markdown (links, images, emphasis, code, raw HTML,
# entities, Streamlit's ``:colour[...]`` directives and ``:icon:`` shortcodes, LaTeX, tables,
# strikethrough). Values never start a line (``visible`` turns newlines into spaces), so the
# line-start markers (``#``, ``-``, ``1.``) need no escape beyond ``#``.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()<>#!:$~|{}&])")
_HTML_SAFE_JSON = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                   "\u2028": "\\u2028", "\u2029": "\\u2029"}


def visible(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` as a string without control (Cc) or format (Cf) characters, which include
    the bidirectional overrides and zero-width characters; tabs become spaces, and newlines
    become spaces unless ``keep_newlines``."""
    text = str(text)
    if text.isprintable():  # no Cc or Cf character is printable, nor tab, CR or LF
        return text
    out = []
    for char in text:
        if char == "\n" and keep_newlines:
            out.append(char)
        elif char in "\t\r\n":
            out.append(" ")
        # Cf holds the bidirectional overrides and isolates, which make "exe.txt" read as
        # "txt.exe" (CVE-2021-42574, "Trojan Source"), and the zero-width characters.
        elif unicodedata.category(char) in ("Cc", "Cf"):
            continue
        else:
            out.append(char)
    return "".join(out)


def html_text(text: object, *, keep_newlines: bool = False) -> str:
    """For HTML text and attribute values: ``visible`` and then ``< > & " '`` escaped."""
    return html.escape(visible(text, keep_newlines=keep_newlines), quote=True)


def markdown_text(text: object) -> str:
    """For Markdown (Streamlit's ``st.markdown``, captions, alerts, help): ``visible``, then
    every character that could start markup backslash-escaped, so a value cannot open a
    link, an image, a ``:colour[...]`` directive, emphasis or raw HTML; it reads as typed."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", visible(text))


def safe_link(url: object) -> str | None:
    """``url`` when it is an absolute http(s) URL with a host (so it may become a link);
    None for anything else (``javascript:``, ``data:``, relative or malformed URLs)."""
    text = visible(url).strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in SAFE_LINK_SCHEMES or not parts.hostname:
        return None
    return text


def html_safe_json(value: Any) -> str:
    """JSON whose strings carry ``< > &`` (and the JavaScript line separators) as ``\\u``
    escapes: the same data for any JSON parser, but a receiver that pastes it into an HTML
    page or a ``<script>`` element cannot turn a value into markup."""
    encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in _HTML_SAFE_JSON.items():
        encoded = encoded.replace(char, escaped)
    return encoded
