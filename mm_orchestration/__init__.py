"""mm-orchestration: the Motion Mavericks Portal's background jobs, on Dagster.

`dagster api grpc --module-name mm_orchestration` serves the code location: the package
exposes `defs` lazily, so `mm-jobs` and the tests import only what they use.
"""

from typing import Any

from mm_orchestration.platform.zones import use_pinned_rules

# Every process that imports the package (code server, run workers, the console, the CLI)
# reads time zones from the pinned tzdata only, never the operating system's files.
use_pinned_rules()


def __getattr__(name: str) -> Any:
    if name == "defs":
        from mm_orchestration.definitions import defs

        return defs
    raise AttributeError(f"module 'mm_orchestration' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), "defs"]
