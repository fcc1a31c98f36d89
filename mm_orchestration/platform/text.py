"""Text from portal rows, made safe for where people read it: a subject line, a log
line, a Markdown table in the console.

Tenant names, video titles, event ids and event types are typed by portal users or
sent by vendors, so they may hold line breaks, invisible characters, or Markdown that
would otherwise render as a disguised link (`[details](http://x.example)`) or an image
on an asset's page.
"""

import re
import unicodedata
from collections.abc import Iterable, Sequence

# Unicode categories that are not visible text: controls, format characters (zero-width
# and bidirectional marks, which can reorder what a reader sees) and line separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
# The marks that make Markdown inside a line (links and images need their brackets, HTML,
# emphasis, code, strikethrough, cell borders, entities); CommonMark lets any ASCII
# punctuation be escaped, but escaping only these keeps ordinary names ("us-west-2",
# "asset.viewed") readable in the page's source too.
_MARKDOWN_SPECIAL = frozenset("\\`*_[]<>|~&:@")
# GitHub-flavoured Markdown (the console's renderer uses remark-gfm) also turns bare
# `http://...`, `www....` and `name@host` into links; an escaped ':' or '@' breaks the
# first and the last, an escaped dot after `www` the second.
_WWW = re.compile(r"(?i)(www)\.")


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
    """`value` as literal text in Markdown (a table cell, a check's description): one
    line, with every mark that Markdown reads backslash-escaped, so nothing in it is a
    link (written or automatic), an image, HTML, emphasis or a cell border."""
    text = "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in one_line(value, limit))
    return _WWW.sub(r"\1\\.", text)


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()
) -> str:
    """A Markdown table of `rows` (each cell escaped); columns in `numeric` align right."""
    rule = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = [list(headers), rule] + [[markdown_cell(cell) for cell in row] for row in rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


# -- values that failed a check --------------------------------------------------------
#
# A value a person or a setting supplies may be a secret (a password pasted into the wrong
# variable, a run config field that reads an environment variable), so a message refusing
# it names the field and the shape expected, never the value. A library's own reason
# (email-validator's, libpq's) is kept only when it quotes none of the value.

NOT_SHOWN = "the value is not shown"
# The longest run of a value's characters a message may hold and still quote none of it:
# a single bad character (`':'`) or a short word is how a reason says what is wrong.
_QUOTED_RUN = 4


def quotes_value(message: str, value: str) -> bool:
    """Whether `message` holds `value`, or any `_QUOTED_RUN` characters of it in a row
    (letter case aside): then the message could show a secret, or part of one."""
    text, secret = message.casefold(), value.casefold()
    if not secret.strip():
        return False
    if len(secret) < _QUOTED_RUN:
        return secret in text
    return any(secret[i : i + _QUOTED_RUN] in text for i in range(len(secret) - _QUOTED_RUN + 1))


# Quotations, read left to right: one of more than a character or three is a library
# quoting something, maybe the value transformed (IDNA decodes a domain's `xn--` label and
# quotes the result).
_QUOTATION = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def reason_without_value(reason: str, value: str, fallback: str) -> str:
    """A library's `reason` for refusing `value` when it quotes none of it (neither a run
    of its characters nor any quotation that could be it transformed), else `fallback`,
    a reason in our own words."""
    quoted = (m[1] if m[1] is not None else m[2] for m in _QUOTATION.finditer(reason))
    if quotes_value(reason, value) or any(len(q) >= _QUOTED_RUN for q in quoted):
        return fallback
    return reason
