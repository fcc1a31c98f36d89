"""Text from portal rows, made safe for where people read it: a subject line, a log
line, a Markdown table in the console.

Tenant names, video titles, event ids and event types are typed by portal users or
sent by vendors, so they may hold line breaks, invisible characters, or Markdown that
would otherwise render as a disguised link (`[details](http://x.example)`) or an image
on an asset's page.
"""

import unicodedata
from collections.abc import Iterable, Sequence

# Unicode categories that are not visible text: controls, format characters (zero-width
# and bidirectional marks, which can reorder what a reader sees) and line separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
# The marks that make Markdown inside a line (links and images need their brackets, HTML,
# emphasis, code, strikethrough, cell borders, entities); CommonMark lets any ASCII
# punctuation be escaped, but escaping only these keeps ordinary names ("us-west-2",
# "asset.viewed") readable in the page's source too.
_MARKDOWN_SPECIAL = frozenset("\\`*_[]<>|~&")


def one_line(value: object, limit: int = 200) -> str:
    """`value` as one line of visible text, at most `limit` characters (cut with '…').

    Line breaks and tabs become spaces; other invisible characters become '?'."""
    text = "".join(
        " "
        if c in "\r\n\t\v\f\x85\u2028\u2029"
        else "?"
        if unicodedata.category(c) in _INVISIBLE
        else c
        for c in str(value)
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_cell(value: object, limit: int = 200) -> str:
    """`value` as literal text in a Markdown table cell: one line, with every mark that
    Markdown reads backslash-escaped, so nothing in it is a link, an image, HTML,
    emphasis or a cell border."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in one_line(value, limit))


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()
) -> str:
    """A Markdown table of `rows` (each cell escaped); columns in `numeric` align right."""
    rule = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = [list(headers), rule] + [[markdown_cell(cell) for cell in row] for row in rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)
