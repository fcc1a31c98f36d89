"""The digest's statements, composed from its SQL files (`sql/`): who may get a digest,
their distinct choices, what a digest says, and how a period is settled or previewed.

The pieces every digest statement shares (who is eligible, since when a digest reports,
whether its recipient is suppressed, what it says) are written once and composed with
psycopg's `sql`, so the run and the preview can never say different things. Values are
always parameters; only our own fragments and identifiers are composed in.
"""

from __future__ import annotations

from psycopg import sql

from mm_orchestration.platform.sql_files import query

# Rows of the fallback ids returned (logged by id, never by address).
IDS_SHOWN = 100

# A person's choice as one value, exactly as stored: people are joined to the due choices
# on it (one key PostgreSQL hashes; on five columns it estimated one row and compared
# every pair).
RAW_CHOICE = """
concat_ws('|', quote_nullable(u.timezone), quote_nullable(u.digest_frequency::text),
          quote_nullable(u.digest_time), quote_nullable(u.digest_weekday))
"""  # quoted, so that NULL and '' (or a value holding '|') are never one key

# When the previous digest this person was sent went (a late one reported up to then),
# else one period back; never more than LONGEST_LOOK_BACK (a person back after months
# gets the week, not the months).
SINCE = """
greatest(coalesce((SELECT max(r.settled_at) FROM ops.digest_periods r
                    WHERE r.user_id = p.id AND r.outcome = 'queued'), p.since_default),
         %(now)s::timestamptz - %(look_back)s::interval)
"""

# A first cut of the suppression rule (same spelling, ASCII case): delivery screens every
# row by the whole rule (outbox.screening: any case, internationalised domains). Written
# as IN, which PostgreSQL hashes once; EXISTS here would scan the list once per person.
SUPPRESSED = """
coalesce(lower(btrim(p.email)) IN (SELECT lower(btrim(x.email))
                                     FROM portal.email_suppressions x
                                    WHERE x.email IS NOT NULL), false)
"""


def _shared(spans: str) -> dict[str, sql.Composable]:
    """The fragments SETTLE and PREVIEW both compose; local times come from our zone rules
    in `spans` (ops.zone_spans, or the same rows as a CTE), never PostgreSQL's zone files."""
    return {
        "eligible": sql.SQL(query(__package__, "eligible")),
        "since": sql.SQL(SINCE),
        "suppressed": sql.SQL(SUPPRESSED),
        "content": sql.SQL(query(__package__, "content")).format(spans=sql.SQL(spans)),
        "payload": sql.SQL(query(__package__, "payload")),
    }


# The distinct choices of the eligible people, each once: the one read of every person a
# run makes, so it is kept to a scan and a hash of raw columns (and a hash of the few
# active agencies). A group's people are exactly who may get its digest: someone whose
# agency is resumed joins their group as a reactivated person does (digest_groups).
CHOICES = sql.SQL(query(__package__, "choices")).format(raw=sql.SQL(RAW_CHOICE))

SETTLE = sql.SQL(query(__package__, "settle")).format(
    raw=sql.SQL(RAW_CHOICE), ids_shown=sql.Literal(IDS_SHOWN), **_shared("ops.zone_spans")
)

PREVIEW = sql.SQL(query(__package__, "preview")).format(**_shared("spans"))
