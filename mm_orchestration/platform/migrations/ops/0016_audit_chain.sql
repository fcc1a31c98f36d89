-- The audit log becomes append-only and tamper-evident (issue 27), and every restore drill
-- says when the next one is due.
--
-- 1. The entries: the table `ops.audit_log` was, renamed `ops.audit_entries`; a row is
--    never changed. How an entry ended (audit.settle) or what a job added to it afterwards
--    (audit.annotate) is a row of its own that `settles` that entry.
-- 2. `ops.audit_log` is now a view of the entries as they read today: each with its
--    latest outcome and run id and its details merged with what was added later. Every
--    reader (the console, the audit trail, outside checks) keeps its query; an INSERT
--    into it (outside seeds, tests) goes to the entries.
-- 3. The chain: when a transaction that wrote entries commits, each of them gets a link in
--    `ops.audit_chain` (position `seq`, the previous link's hash, and the SHA-256 of the
--    previous hash and the entry's canonical form). Appends are serialised by the row lock
--    on `ops.audit_chain_head`, taken at commit (a deferred trigger), so a long transaction
--    holds it only for its commit. The canonical form is rebuilt independently by
--    `features/audit_trail/chain.py`, which verifies the chain.
-- 4. Guards: nobody, the owner included, updates, deletes or truncates entries or links
--    outside the maintenance path (docs/audit.md): a role that owns the tables runs
--    `SET LOCAL mm.audit_maintenance = '<reason>'` in the transaction, and every such
--    statement appends an `audit_maintenance` entry naming the reason, so even that path
--    leaves a trace in the chain.

ALTER TABLE ops.audit_log RENAME TO audit_entries;
ALTER TABLE ops.audit_entries ADD COLUMN settles bigint;
CREATE INDEX audit_entries_settles_idx ON ops.audit_entries (settles) WHERE settles IS NOT NULL;
CREATE INDEX audit_entries_run_idx ON ops.audit_entries (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE ops.audit_chain (
    seq       bigint PRIMARY KEY,
    entry_id  bigint NOT NULL UNIQUE,
    linked_at timestamptz NOT NULL,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL
);
CREATE INDEX audit_chain_linked_idx ON ops.audit_chain (linked_at);

-- The newest link, one row: its lock serialises appends, and a chain whose newest links
-- were deleted no longer ends where its head says.
CREATE TABLE ops.audit_chain_head (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq       bigint NOT NULL,
    linked_at timestamptz NOT NULL,
    hash      bytea NOT NULL
);

-- One field of the canonical form: its UTF-8 bytes prefixed with their length and ':',
-- or '~' for NULL (so no two rows share a form).
CREATE FUNCTION ops.audit_field(value text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '\x7e'::bytea
                ELSE convert_to(length(convert_to(value, 'UTF8'))::text || ':', 'UTF8')
                     || convert_to(value, 'UTF8') END
$$;

-- A moment as the canonical form writes it: UTC, microseconds, e.g. 2026-12-07T05:44:00.123456Z.
CREATE FUNCTION ops.audit_utc(moment timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(moment AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- A link's hash: SHA-256 of the previous hash, the form's version, the link's position and
-- time, and every column of the entry.
CREATE FUNCTION ops.audit_hash(
    prev bytea, seq bigint, linked_at timestamptz, e ops.audit_entries
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(
        prev || convert_to('mm-audit-chain/1', 'UTF8')
        || ops.audit_field(seq::text) || ops.audit_field(ops.audit_utc(linked_at))
        || ops.audit_field(e.id::text) || ops.audit_field(ops.audit_utc(e.occurred_at))
        || ops.audit_field(e.actor) || ops.audit_field(e.action)
        || ops.audit_field(e.job_name) || ops.audit_field(e.run_id)
        || ops.audit_field(e.details::text) || ops.audit_field(e.role)
        || ops.audit_field(e.target) || ops.audit_field(e.outcome)
        || ops.audit_field(e.settles::text)
    )
$$;

-- The entries written before this migration are linked in id order.
DO $$
DECLARE
    entry ops.audit_entries;
    prev  bytea := decode(repeat('00', 32), 'hex');
    n     bigint := 0;
    at    timestamptz := '-infinity';
BEGIN
    FOR entry IN SELECT * FROM ops.audit_entries ORDER BY id LOOP
        n := n + 1;
        at := greatest(clock_timestamp(), at);
        INSERT INTO ops.audit_chain (seq, entry_id, linked_at, prev_hash, hash)
        VALUES (n, entry.id, at, prev, ops.audit_hash(prev, n, at, entry));
        prev := ops.audit_hash(prev, n, at, entry);
    END LOOP;
    INSERT INTO ops.audit_chain_head (seq, linked_at, hash) VALUES (n, at, prev);
END $$;

-- At commit, one link per entry the transaction wrote, after the head.
CREATE FUNCTION ops.audit_link() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head ops.audit_chain_head;
    at   timestamptz;
    h    bytea;
BEGIN
    SELECT * INTO head FROM ops.audit_chain_head FOR UPDATE;
    IF NOT FOUND THEN  -- only after maintenance emptied the chain: it starts again
        INSERT INTO ops.audit_chain_head (seq, linked_at, hash)
        VALUES (0, '-infinity', decode(repeat('00', 32), 'hex'))
        ON CONFLICT DO NOTHING;
        SELECT * INTO head FROM ops.audit_chain_head FOR UPDATE;
    END IF;
    at := greatest(clock_timestamp(), head.linked_at);
    h := ops.audit_hash(head.hash, head.seq + 1, at, NEW);
    INSERT INTO ops.audit_chain (seq, entry_id, linked_at, prev_hash, hash)
    VALUES (head.seq + 1, NEW.id, at, head.hash, h);
    UPDATE ops.audit_chain_head SET seq = head.seq + 1, linked_at = at, hash = h;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER audit_entries_link
    AFTER INSERT ON ops.audit_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ops.audit_link();

-- The maintenance path's reason, when this transaction is on it and its role owns `rel`.
CREATE FUNCTION ops.audit_maintenance(rel oid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT reason
      FROM (SELECT nullif(btrim(current_setting('mm.audit_maintenance', true)), '') AS reason) r
     WHERE pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = rel), 'MEMBER')
$$;

-- Refuses what would change the trail: UPDATE, DELETE and TRUNCATE of entries and links,
-- and any write of links or the head but ops.audit_link's own.
CREATE FUNCTION ops.audit_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME IN ('audit_chain', 'audit_chain_head')
       AND TG_OP IN ('INSERT', 'UPDATE')
       AND NOT (TG_TABLE_NAME = 'audit_chain' AND TG_OP = 'UPDATE')
       AND pg_trigger_depth() > 1 THEN
        RETURN NULL;  -- ops.audit_link at commit
    END IF;
    IF ops.audit_maintenance(TG_RELID) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'ops.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit entries are never changed or deleted; an ending is a new entry '
                     '(audit.settle). Maintenance: docs/audit.md.';
END $$;

CREATE TRIGGER audit_entries_guard BEFORE UPDATE OR DELETE OR TRUNCATE ON ops.audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_guard();
CREATE TRIGGER audit_chain_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_chain FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_guard();
CREATE TRIGGER audit_chain_head_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_chain_head FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_guard();

-- Every statement on the maintenance path appends an entry saying so (into the chain).
CREATE FUNCTION ops.audit_maintenance_entry() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;  -- ops.audit_link's own writes
    END IF;
    INSERT INTO ops.audit_entries (actor, action, details, target, outcome)
    VALUES (session_user, 'audit_maintenance',
            jsonb_build_object('reason', ops.audit_maintenance(TG_RELID),
                               'operation', TG_OP, 'role', current_user),
            'ops.' || TG_TABLE_NAME, 'succeeded');
    RETURN NULL;
END $$;

CREATE TRIGGER audit_entries_maintained AFTER UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_entries FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_maintenance_entry();
CREATE TRIGGER audit_chain_maintained AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_chain FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_maintenance_entry();
CREATE TRIGGER audit_chain_head_maintained AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_chain_head FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_maintenance_entry();

-- The entries as they read today: settlement rows folded into the entry they settle.
CREATE VIEW ops.audit_log AS
SELECT e.id, e.occurred_at, e.actor, e.action, e.job_name,
       coalesce(s.run_id, e.run_id) AS run_id,
       CASE WHEN s.patch IS NULL THEN e.details ELSE e.details || s.patch END AS details,
       e.role, e.target,
       coalesce(s.outcome, e.outcome) AS outcome
  FROM ops.audit_entries e
  LEFT JOIN LATERAL (
       SELECT (array_agg(x.outcome ORDER BY x.id DESC)
                   FILTER (WHERE x.outcome IS NOT NULL))[1] AS outcome,
              (array_agg(x.run_id ORDER BY x.id DESC)
                   FILTER (WHERE x.run_id IS NOT NULL))[1] AS run_id,
              jsonb_object_agg(kv.key, kv.value ORDER BY x.id)
                   FILTER (WHERE kv.key IS NOT NULL) AS patch
         FROM ops.audit_entries x
         LEFT JOIN LATERAL jsonb_each(x.details) kv ON true
        WHERE x.settles = e.id
  ) s ON true
 WHERE e.settles IS NULL;

CREATE FUNCTION ops.audit_log_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ops.audit_entries
           (occurred_at, actor, action, job_name, run_id, details, role, target, outcome)
    VALUES (coalesce(NEW.occurred_at, now()), NEW.actor, NEW.action, NEW.job_name,
            NEW.run_id, coalesce(NEW.details, '{}'::jsonb), NEW.role, NEW.target,
            NEW.outcome)
    RETURNING id, occurred_at, details INTO NEW.id, NEW.occurred_at, NEW.details;
    RETURN NEW;
END $$;

CREATE FUNCTION ops.audit_log_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ops.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'An ending is a new entry (audit.settle). Maintenance: docs/audit.md.';
END $$;

CREATE TRIGGER audit_log_insert INSTEAD OF INSERT ON ops.audit_log
    FOR EACH ROW EXECUTE FUNCTION ops.audit_log_insert();
CREATE TRIGGER audit_log_refuse INSTEAD OF UPDATE OR DELETE ON ops.audit_log
    FOR EACH ROW EXECUTE FUNCTION ops.audit_log_refuse();

-- Each restore drill says when the next is due (features/restore_drill/due.py: 35 days
-- after the last successful drill; a failed drill leaves the date where it was; with no
-- success ever, at once). Earlier drills get it from the same rule.
ALTER TABLE ops.backup_drills ADD COLUMN next_due_at timestamptz;
UPDATE ops.backup_drills d
   SET next_due_at = coalesce(
           (SELECT max(s.finished_at) FROM ops.backup_drills s
             WHERE s.status = 'succeeded'
               AND coalesce(s.finished_at, s.started_at) <= coalesce(d.finished_at, d.started_at)
           ) + interval '35 days',
           coalesce(d.finished_at, d.started_at));

-- Signed evidence bundles written by `mm-jobs evidence export`, which the compliance team
-- downloads from the console (/evidence/<period>).
CREATE TABLE ops.evidence_bundles (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period          text NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    generated_at    timestamptz NOT NULL DEFAULT now(),
    generated_by    text NOT NULL,
    storage_uri     text NOT NULL,
    sha256          text NOT NULL,
    bytes           bigint NOT NULL,
    chain_head_seq  bigint,
    chain_head_hash text,
    public_key      text NOT NULL
);
CREATE INDEX evidence_bundles_period_idx ON ops.evidence_bundles (period, generated_at);
