"""Markdown -> HTML for the guidelines page (and model responses), by markdown-it-py (CommonMark).

Raw HTML is off: tags in the text come out escaped, as text. Links, tables (GFM) and
strikethrough are on. markdown-it-py's link check (``validateLink``) drops ``javascript:``,
``vbscript:``, ``file:`` and ``data:`` URLs (except ``data:image/gif|png|jpeg|webp``) after
unescaping entities and normalising case, so such a link is left as plain text. Links open in a new tab
with ``rel="noopener noreferrer nofollow"``. The page's Content-Security-Policy forbids inline scripts
on top of this.
"""

from __future__ import annotations

from markdown_it import MarkdownIt

_LINK_REL = "noopener noreferrer nofollow"


def _make_renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])

    def link_open(renderer, tokens, idx, options, env):
        tokens[idx].attrSet("target", "_blank")  # the annotator's page stays open
        tokens[idx].attrSet("rel", _LINK_REL)
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MARKDOWN = _make_renderer()


def render(markdown: str) -> str:
    """Markdown text -> an HTML fragment (CommonMark + tables; raw HTML and script URLs inert)."""
    return _MARKDOWN.render(markdown)
