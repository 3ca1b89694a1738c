"""Guidelines (and model responses) as Markdown: CommonMark by markdown-it-py with raw HTML off, so
links and tables work while HTML and script URLs stay inert. The browser check is test_browser.py."""

from __future__ import annotations

import re

import pytest

from posttrain.annotate.markdown import render


def test_commonmark_basics_links_and_tables():
    html = render(
        "# Rules\n\nPrefer **short** and *kind* answers, see [the docs](https://example.com/a?b=1&c=2)."
        "\n\n- one\n- two\n\n1. first\n2. second\n\n| aspect | scale |\n|---|---:|\n| helpful | 1-5 |\n"
        "\n```\ncode <b>\n```\n"
    )
    assert "<h1>Rules</h1>" in html and "<strong>short</strong>" in html and "<em>kind</em>" in html
    assert '<a href="https://example.com/a?b=1&amp;c=2"' in html
    assert 'target="_blank" rel="noopener noreferrer nofollow"' in html
    assert "<ul>" in html and "<ol>" in html and "<li>two</li>" in html
    assert "<table>" in html and "<th>aspect</th>" in html and "<td>helpful</td>" in html
    assert "<pre><code>code &lt;b&gt;\n</code></pre>" in html


@pytest.mark.parametrize(
    "source",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](&#106;avascript:alert(1))",
        "[x](java\tscript:alert(1))",
        "<javascript:alert(1)>",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html,<script>alert(1)</script>)",
        "[x]: javascript:alert(1)\n\n[x]",
        "![img](javascript:alert(1))",
    ],
)
def test_script_urls_are_inert(source):
    html = render(source)
    hrefs = re.findall(r'(?:href|src)="([^"]*)"', html)
    assert all(not re.match(r"\s*(javascript|vbscript|data:text)", h, re.I) for h in hrefs), html


@pytest.mark.parametrize(
    "source",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "<div onclick='x()'>hi</div>",
        "text <iframe src='https://evil.example'></iframe> more",
        "**<svg/onload=alert(1)>**",
    ],
)
def test_raw_html_shows_as_text(source):
    html = render(source)
    assert "<script" not in html and "<img" not in html and "<div" not in html
    assert "<iframe" not in html and "<svg" not in html
    assert "&lt;" in html
