"""Where Dagster keeps its runs: one instance for the CLI, the console, the daemon and tests.

Every process finds the instance the same way, through `DAGSTER_HOME`'s `dagster.yaml`
(default `<MM_DATA_DIR>/dagster_home`, which `mm-jobs dev` and `prod-local` write), so a
run started from `mm-jobs run` is a run the console shows and the sensors watch. Dagster's
storage is a database of its own: its tables (`runs`, `event_logs`, ...) are never created
in the portal's database, and an instance configured that way is refused by name.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict

from mm_orchestration.platform.settings import PORT_RANGE, Settings, SettingsError, bounded_integer
from mm_orchestration.platform.storage import SETTING as STORAGE_SETTING
from mm_orchestration.platform.storage import ConnectionStringStorage, sqlalchemy_url

if TYPE_CHECKING:
    from dagster import DagsterInstance

# The project's dagster.yaml, beside the package (the checkout, or the image's copy of it).
TEMPLATE = Path(__file__).resolve().parents[2] / "dagster.yaml"
# How a message names the instance's folder: never its path (a setting's value, which may
# hold a secret pasted into the wrong variable).
_HOME = "DAGSTER_HOME (or <MM_DATA_DIR>/dagster_home when it is unset)"
_LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}
# How a dagster.yaml that mm-jobs wrote begins (write_home).
WRITTEN_BY = "# Written by mm-jobs"


def home_dir(settings: Settings) -> Path:
    """The instance's folder: DAGSTER_HOME, else `<MM_DATA_DIR>/dagster_home`."""
    return Path(settings.dagster_home or Path(settings.data_dir, "dagster_home")).resolve()


def write_home(home: Path, storage_conninfo: str | None = None) -> Path:
    """Write `home/dagster.yaml` from the project's template and return the folder.

    With `storage_conninfo` (the local embedded server, which needs no password) the storage
    is written into the file, so any process that opens this home, `mm-jobs run` in another
    terminal included, finds the same database without setting a variable. Without it the
    template's `{env: DAGSTER_DATABASE_URL}` stays, as in production.
    """
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(TEMPLATE.read_text())
    if storage_conninfo is not None:
        config["storage"]["custom"]["config"]["connection_string"] = storage_conninfo
    header = f"{WRITTEN_BY} from {TEMPLATE}; edit that file, not this one.\n"
    (home / "dagster.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    return home


def open_instance(settings: Settings) -> DagsterInstance:
    """The instance every process shares, after checking it is one.

    Raises SettingsError naming the setting when DAGSTER_HOME has no `dagster.yaml` (Dagster
    would quietly make a private SQLite instance there, invisible to the console), when a
    variable its storage reads is unset, or when that storage is the portal database named
    by DATABASE_URL. The checks run before Dagster opens the storage, because opening it
    creates Dagster's tables.
    """
    from dagster import DagsterInstance

    home = home_dir(settings)
    url, origin = _storage(home)
    refuse_portal_storage(url, settings.database_url)
    refuse_portal_storage(url, settings.database_direct_url)
    check_storage_server(url, origin)
    return DagsterInstance.from_config(str(home))


@dataclass(frozen=True)
class StorageOrigin:
    """Where dagster.yaml takes Dagster's storage from, for a message to name: the variables
    it reads (DAGSTER_DATABASE_URL), none when the connection string is in the file itself;
    `local_stack`: a string `mm-jobs dev` or `prod-local` wrote there (the embedded server)."""

    variables: tuple[str, ...] = ()
    local_stack: bool = False

    @property
    def setting(self) -> str:
        """What a message about the storage starts with."""
        if self.variables == (STORAGE_SETTING,):
            return f"{STORAGE_SETTING} (Dagster's storage, read by dagster.yaml in DAGSTER_HOME)"
        if self.variables:
            return (
                "Dagster's storage (dagster.yaml in DAGSTER_HOME, from "
                f"{', '.join(self.variables)})"
            )
        return "Dagster's storage (dagster.yaml in DAGSTER_HOME)"

    @property
    def source(self) -> str:
        """What holds the connection string, for the advice."""
        if self.variables:
            return " and ".join(self.variables)
        return "the connection string in DAGSTER_HOME's dagster.yaml"


def check_storage_server(url: str, origin: StorageOrigin | None = None) -> None:
    """Ask Dagster's storage server itself. Raises SettingsError in seconds when it cannot
    be used (Dagster itself retries for a minute and then prints a long traceback), in the
    wording of DATABASE_URL's refusals (db.unreachable): the setting `origin` names, where
    (as given), whether the server does not answer, refused the credentials or has no such
    database, and libpq's reason; the local stack's hint only for the local stack's server.
    Also when the database holds the portal's schemas, however the two settings spell
    their hosts (a pooler's name, an address, a socket)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from mm_orchestration.platform.db import connect_timeout, unreachable

    origin = origin or StorageOrigin()
    params = _sqlalchemy_params(url)
    engine = create_engine(
        url, connect_args={"connect_timeout": connect_timeout(params)}, poolclass=NullPool
    )
    try:
        with engine.connect() as conn:
            # The server's own word, whatever names reach it (a pooler's host, a replica's
            # address): a database holding the portal's schemas is the portal database.
            portal = conn.execute(
                text(
                    "SELECT to_regnamespace('portal') IS NOT NULL"
                    " OR to_regclass('ops.schema_migrations') IS NOT NULL"
                )
            ).scalar()
    except Exception as exc:
        local = (
            "It is the local stack's embedded server: is the local stack (`make dev`) running?"
            if origin.local_stack
            else None
        )
        message = unreachable(
            origin.setting,
            params,
            getattr(exc, "orig", None) or exc,
            source=origin.source,
            if_unanswered=local,
        )
        raise SettingsError(message) from None
    finally:
        engine.dispose()
    if portal:
        raise SettingsError(
            f"Dagster's storage (dagster.yaml in DAGSTER_HOME, {STORAGE_SETTING}) holds the "
            "portal's schemas (portal, ops): it is the portal database, where Dagster would "
            "create its tables (runs, event_logs, ...). Give Dagster a database of its own, "
            "for example `dagster` on the same server"
        )


def storage_url(home: Path) -> str:
    """The SQLAlchemy URL of the PostgreSQL storage that `home/dagster.yaml` configures,
    with its `{env: ...}` values resolved as Dagster resolves them."""
    return _storage(home)[0]


def _storage(home: Path) -> tuple[str, StorageOrigin]:
    """storage_url, and where the file takes the storage from."""
    from dagster_postgres.utils import pg_url_from_config

    path = home / "dagster.yaml"
    if not path.exists():
        raise SettingsError(
            f"{_HOME} has no dagster.yaml: start the console once with `make dev` (it writes "
            "one), or point DAGSTER_HOME at the instance the console uses; the folder is not "
            "shown"
        )
    written = path.read_text()
    storage = (yaml.safe_load(written) or {}).get("storage") or {}
    custom = storage.get("custom") or {}
    ours = (custom.get("module"), custom.get("class")) == (
        ConnectionStringStorage.__module__,
        ConnectionStringStorage.__name__,
    )
    # Ours (a connection string), or dagster-postgres's own fields (the Helm chart's).
    block = (custom.get("config") or {}) if ours else storage.get("postgres")
    if not block:
        raise SettingsError(
            f"{_HOME}: dagster.yaml stores Dagster's runs in no PostgreSQL database; the jobs "
            "keep their runs in PostgreSQL so that every process sees them"
        )
    missing: list[str] = []
    read: list[str] = []
    resolved = _resolve_env(block, missing, read)
    origin = StorageOrigin(
        variables=tuple(dict.fromkeys(read)),
        # A connection string in the file, written by the local stack (write_home).
        local_stack=not read and ours and written.startswith(WRITTEN_BY),
    )
    if missing:
        raise SettingsError(
            f"{_HOME}: Dagster's storage needs {', '.join(missing)} to be set (a database of "
            "its own, never the portal's)"
        )
    if not ours:
        port = (block.get("postgres_db") or {}).get("port")
        if isinstance(port, dict) and set(port) == {"env"}:
            # Dagster pastes the port into its URL as text: `5432x` or `٥٤٣٢` would surface
            # as a SQLAlchemy error naming no variable.
            bounded_integer(port["env"], str(resolved["postgres_db"]["port"]), *PORT_RANGE)
        return str(pg_url_from_config(resolved)), origin
    try:
        return sqlalchemy_url(resolved["connection_string"]), origin
    except psycopg.ProgrammingError:
        raise SettingsError(
            f"{STORAGE_SETTING} (Dagster's storage, from dagster.yaml in DAGSTER_HOME) is not "
            "a connection string libpq accepts: a postgresql:// URL or key=value pairs; the "
            "value is not shown"
        ) from None


def refuse_portal_storage(url: str, database_url: str | None) -> None:
    """Raise SettingsError when Dagster's storage `url` is the portal database: the same
    database name on a server (host and port) that both may reach."""
    if not database_url:
        return
    storage_servers, storage_db = _target(_sqlalchemy_params(url))
    portal_servers, portal_db = _target(conninfo_to_dict(database_url))
    if storage_db == portal_db and set(storage_servers) & set(portal_servers):
        raise SettingsError(
            f"Dagster's storage (dagster.yaml in DAGSTER_HOME, {STORAGE_SETTING}) is the portal "
            "database named by DATABASE_URL: Dagster would create its tables (runs, "
            "event_logs, ...) there. Give Dagster a database of its own, for example "
            "`dagster` on the same server"
        )


def _resolve_env(value: Any, missing: list[str], read: list[str]) -> Any:
    """`{env: NAME}` -> the variable's value, as Dagster's StringSource reads it; each NAME
    is added to `read` (and to `missing` when it is unset)."""
    if isinstance(value, dict) and set(value) == {"env"}:
        name = value["env"]
        read.append(name)
        if name not in os.environ or (not os.environ[name] and name != "DAGSTER_PG_PASSWORD"):
            missing.append(name)
        return os.environ.get(name, "")
    if isinstance(value, dict):
        return {key: _resolve_env(item, missing, read) for key, item in value.items()}
    return value


def _sqlalchemy_params(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    params: dict[str, Any] = dict(parsed.query)
    for key, value in (("host", parsed.host), ("port", parsed.port), ("dbname", parsed.database)):
        if value:
            params[key] = value
    if parsed.username and "user" not in params:
        params["user"] = parsed.username
    return params


def _target(params: dict[str, Any]) -> tuple[tuple[tuple[str, str], ...], str]:
    """((host, port) for each host, database) with the defaults libpq applies; loopback
    names, the default socket and socket folders fold to `localhost` (the same machine)."""
    hosts = str(params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST") or "")
    folded = [
        "localhost" if h.lower() in _LOOPBACK or h.startswith(("/", "@")) else h.lower()
        for h in hosts.split(",")
    ]
    ports = str(params.get("port") or os.environ.get("PGPORT") or "").split(",")
    ports = [p.strip() or "5432" for p in (ports * len(folded) if len(ports) == 1 else ports)]
    user = str(params.get("user") or os.environ.get("PGUSER") or _os_user())
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    return tuple(zip(folded, ports, strict=False)), dbname


def _os_user() -> str:
    """libpq's default user name: the operating system's."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
