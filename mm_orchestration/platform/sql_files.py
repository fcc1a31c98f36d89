"""SQL longer than a few lines lives in `.sql` files beside its feature, loaded by name.

`query(__package__, "report_rows")` reads `<feature>/sql/report_rows.sql` once per process
(as procrastinate keeps `sql/queries.sql`): the statement reads as SQL, with its comments,
in an editor that highlights it, and the Python beside it stays about the rule. Values are
still passed as parameters (`%(name)s`), never formatted into the text.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def query(package: str, name: str) -> str:
    """The text of `<package>/sql/<name>.sql`; FileNotFoundError naming it when missing."""
    return (resources.files(package) / "sql" / f"{name}.sql").read_text(encoding="utf-8")
