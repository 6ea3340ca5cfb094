"""Event-derived text made safe for each output: Markdown, HTML, links, JSON, plain text."""

from __future__ import annotations

import json

import pytest

from monitor.safe_output import html_safe_json, html_text, markdown_text, safe_link, visible


def test_visible_drops_controls_bidi_and_zero_width() -> None:
    assert visible("a\u202eb\u2066c\u200bd\x00e\x1bf") == "abcdef"
    assert visible("one\ntwo\tthree\r") == "one two three "
    assert visible("one\ntwo", keep_newlines=True) == "one\ntwo"
    assert visible("Ärzte 東京 café") == "Ärzte 東京 café"


def test_html_text_escapes_markup_and_quotes() -> None:
    assert html_text("</script><img src=x onerror='a(\"1\")'>&lt;") == (
        "&lt;/script&gt;&lt;img src=x onerror=&#x27;a(&quot;1&quot;)&#x27;&gt;&amp;lt;")


def test_markdown_text_opens_no_markup() -> None:
    text = markdown_text("[x](javascript:alert(1)) ![i](http://e/t.png) :red[FAKE] **b** "
                         "<img src=x> `c` $x$ ~~s~~ | &lt; 1.4.0 \u202e")
    assert text == ("\\[x\\]\\(javascript\\:alert\\(1\\)\\) \\!\\[i\\]\\(http\\://e/t.png\\) "
                    "\\:red\\[FAKE\\] \\*\\*b\\*\\* \\<img src=x\\> \\`c\\` \\$x\\$ "
                    "\\~\\~s\\~\\~ \\| \\&lt; 1.4.0 ")


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JavaScript:alert(1)",
                                 " javascript:alert(1)", "java\u200bscript:alert(1)",
                                 "data:text/html,<script>", "vbscript:x", "//evil.example/",
                                 "/v1/alerts/1", "http://", "http://[::1"])
def test_only_absolute_http_urls_are_links(url: str) -> None:
    assert safe_link(url) is None


def test_http_urls_stay_links() -> None:
    assert safe_link("https://mon.example.org/v1/alerts/7") == (
        "https://mon.example.org/v1/alerts/7")
    assert safe_link("HTTP://mon:8000/x") == "HTTP://mon:8000/x"


def test_html_safe_json_is_the_same_data_without_markup() -> None:
    value = {"site": "</script><script>alert(1)</script>", "tags": ["a&b", "\u2028"],
             "n": 3, "ok": True}
    encoded = html_safe_json(value)
    assert not set("<>&\u2028") & set(encoded)
    assert json.loads(encoded) == value
    with pytest.raises(ValueError):
        html_safe_json({"x": float("nan")})
