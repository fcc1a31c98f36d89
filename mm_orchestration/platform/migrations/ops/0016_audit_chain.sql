-- The audit log becomes append-only and tamper-evident (issue 27), and every restore drill
-- says when the next one is due.
--
-- 1. The entries: the table `ops.audit_log` was, renamed `ops.audit_entries`; a row is
--    never changed. How an entry ended (audit.settle) or what a job added to it afterwards
--    (audit.annotate) is a row of its own that `settles` that entry.
-- 2. `ops.audit_log` is now a view of the entries as they read today: each with its own
--    fields, and what its settlements added (an ending, a run id, details). Every
--    reader (the console, the audit trail, outside checks) keeps its query; an INSERT
--    into it (outside seeds, tests) goes to the entries.
-- 3. The chain: when a transaction that wrote entries commits, each of them gets a link in
--    `ops.audit_chain`, in one of 16 lanes: its position `seq` in the lane, the SHA-256 of
--    the entry's canonical form (`entry_hash`: its columns as a JSON array, as jsonb
--    writes it), the lane's previous link's hash, and `hash` = SHA-256(previous hash ||
--    [version, lane, seq, link time, entry_hash] as JSON). A transaction takes, at commit
--    (a deferred trigger), the row lock of the first lane's head no other transaction
--    holds, and keeps it to its commit: appends within a lane are serialised, concurrent
--    writers append to different lanes and their commits are flushed together (one chain
--    for all would make every writer wait for each other's commit: docs/audit.md has the
--    figures). `features/audit_trail/chain.py` rebuilds every hash independently.
-- 4. Guards: nobody, the owner included, updates, deletes or truncates entries or links
--    outside the maintenance path (docs/audit.md): a role that owns the tables runs
--    `SET LOCAL mm.audit_maintenance = '<reason>'` in the transaction, and every such
--    statement appends an `audit_maintenance` entry naming the reason, so even that path
--    leaves a trace in the chain. The chain's tables are written only by `ops.audit_link`,
--    which runs as their owner (SECURITY DEFINER): the application's role may only read
--    them (platform/grants.py). Every function here pins its search_path.
-- 5. A settlement only adds to the entry it settles: the same person, action, job, role
--    and target (checked as it is written), an ending for an entry still `allowed` (or
--    with none), a run id for one without, details it does not hold. Nobody but the
--    owner writes an entry dated before its transaction began (backdated).

ALTER TABLE ops.audit_log RENAME TO audit_entries;
ALTER TABLE ops.audit_entries ADD COLUMN settles bigint;
-- A moment the chain's canonical form can write (never 'infinity'); a settlement names an
-- earlier entry.
ALTER TABLE ops.audit_entries
    ADD CONSTRAINT audit_entries_finite CHECK (isfinite(occurred_at)),
    ADD CONSTRAINT audit_entries_settles_earlier CHECK (settles < id);
CREATE INDEX audit_entries_settles_idx ON ops.audit_entries (settles) WHERE settles IS NOT NULL;
CREATE INDEX audit_entries_run_idx ON ops.audit_entries (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE ops.audit_chain (
    lane       smallint NOT NULL CHECK (lane BETWEEN 0 AND 15),
    seq        bigint NOT NULL,
    entry_id   bigint NOT NULL UNIQUE,
    linked_at  timestamptz NOT NULL CHECK (isfinite(linked_at)),
    entry_hash bytea NOT NULL,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL,
    PRIMARY KEY (lane, seq)
);
CREATE INDEX audit_chain_linked_idx ON ops.audit_chain (lane, linked_at);

-- Each lane's newest link: its row lock serialises the lane's appends, and a lane whose
-- newest links were deleted no longer ends where its head says.
CREATE TABLE ops.audit_chain_head (
    lane      smallint PRIMARY KEY CHECK (lane BETWEEN 0 AND 15),
    seq       bigint NOT NULL,
    linked_at timestamptz NOT NULL,
    hash      bytea NOT NULL
);
INSERT INTO ops.audit_chain_head (lane, seq, linked_at, hash)
SELECT lane, 0, '-infinity', decode(repeat('00', 32), 'hex') FROM generate_series(0, 15) lane;

-- A moment as the canonical form writes it: UTC, microseconds, e.g. 2026-12-07T05:44:00.123456Z.
CREATE FUNCTION ops.audit_utc(moment timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_char(moment AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- An entry's hash: SHA-256 of every column as a JSON array, in jsonb's text (strings
-- escaped as JSON, ", " between items, details as jsonb writes them).
CREATE FUNCTION ops.audit_entry_hash(e ops.audit_entries) RETURNS bytea
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN sha256(convert_to(jsonb_build_array(
        e.id, ops.audit_utc(e.occurred_at), e.actor, e.action, e.job_name, e.run_id,
        e.details, e.role, e.target, e.outcome, e.settles)::text, 'UTF8'));
END $$;

-- A link's hash: SHA-256 of the lane's previous hash and the link as a JSON array (the
-- form's version, the lane, the position, the link time, the entry's hash in hex).
CREATE FUNCTION ops.audit_link_hash(
    prev bytea, lane smallint, seq bigint, linked_at timestamptz, entry_hash bytea
) RETURNS bytea
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN sha256(prev || convert_to(jsonb_build_array(
        'mm-audit-chain/1', lane, seq, ops.audit_utc(linked_at),
        encode(entry_hash, 'hex'))::text, 'UTF8'));
END $$;

-- The entries written before this migration are linked in id order, in lane 0.
DO $$
DECLARE
    entry  ops.audit_entries;
    digest bytea;
    h      bytea;
    prev   bytea := decode(repeat('00', 32), 'hex');
    n      bigint := 0;
    at     timestamptz := '-infinity';
BEGIN
    FOR entry IN SELECT * FROM ops.audit_entries ORDER BY id LOOP
        n := n + 1;
        at := greatest(clock_timestamp(), at);
        digest := ops.audit_entry_hash(entry);
        h := ops.audit_link_hash(prev, 0::smallint, n, at, digest);
        INSERT INTO ops.audit_chain (lane, seq, entry_id, linked_at, entry_hash, prev_hash, hash)
        VALUES (0, n, entry.id, at, digest, prev, h);
        prev := h;
    END LOOP;
    UPDATE ops.audit_chain_head SET seq = n, linked_at = at, hash = prev WHERE lane = 0;
END $$;

-- At commit, one link per entry the transaction wrote. The lane: the one this transaction
-- already holds (mm.audit_lane, set below, for its other entries), else the backend's own
-- (pid % 16) when no other transaction holds it, else the first that none holds counting
-- from there (SKIP LOCKED), else its own when all are held (waiting while holding none,
-- so two writers never wait for each other in turn). The entry's own hash is worked out
-- before any lock. It runs as the tables' owner (SECURITY DEFINER): the application's role
-- only reads links and heads, so it writes them only through here; while it writes them it
-- says so (mm.audit_linking), for ops.audit_guard and ops.audit_maintenance_entry.
CREATE FUNCTION ops.audit_link() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    digest bytea := ops.audit_entry_hash(NEW);
    held   text := pg_catalog.current_setting('mm.audit_lane', true);
    mine   smallint := pg_catalog.pg_backend_pid() % 16;
    head   ops.audit_chain_head;
    at     timestamptz;
    h      bytea;
    got    boolean;
BEGIN
    IF held !~ '^(1[0-5]|[0-9])$' THEN
        held := NULL;  -- unset, or not a lane this transaction took
    END IF;
    IF held IS NOT NULL THEN
        SELECT * INTO head FROM ops.audit_chain_head WHERE lane = held::smallint FOR UPDATE;
    ELSE
        SELECT * INTO head FROM ops.audit_chain_head WHERE lane = mine FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            SELECT * INTO head FROM ops.audit_chain_head
             ORDER BY (lane + 16 - mine) % 16 LIMIT 1 FOR UPDATE SKIP LOCKED;
        END IF;
        IF NOT FOUND THEN
            SELECT * INTO head FROM ops.audit_chain_head WHERE lane = mine FOR UPDATE;
        END IF;
    END IF;
    got := FOUND;
    PERFORM pg_catalog.set_config('mm.audit_linking', 'on', true);
    IF NOT got THEN  -- only after maintenance emptied the heads: the lanes start again
        INSERT INTO ops.audit_chain_head (lane, seq, linked_at, hash)
        SELECT lane, 0, '-infinity', pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex')
          FROM pg_catalog.generate_series(0, 15) lane
        ON CONFLICT DO NOTHING;
        SELECT * INTO head FROM ops.audit_chain_head WHERE lane = mine FOR UPDATE;
    END IF;
    IF held IS NULL THEN
        PERFORM pg_catalog.set_config('mm.audit_lane', head.lane::text, true);
    END IF;
    at := greatest(pg_catalog.clock_timestamp(), head.linked_at);
    h := ops.audit_link_hash(head.hash, head.lane, head.seq + 1, at, digest);
    INSERT INTO ops.audit_chain (lane, seq, entry_id, linked_at, entry_hash, prev_hash, hash)
    VALUES (head.lane, head.seq + 1, NEW.id, at, digest, head.hash, h);
    UPDATE ops.audit_chain_head SET seq = head.seq + 1, linked_at = at, hash = h
     WHERE lane = head.lane;
    PERFORM pg_catalog.set_config('mm.audit_linking', '', true);
    RETURN NULL;
END $$;
-- Nobody calls it but the trigger.
REVOKE ALL ON FUNCTION ops.audit_link() FROM PUBLIC;

CREATE CONSTRAINT TRIGGER audit_entries_link
    AFTER INSERT ON ops.audit_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ops.audit_link();

-- Whether this role owns `rel` (or may act as its owner).
CREATE FUNCTION ops.audit_owns(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(current_user,
               (SELECT relowner FROM pg_catalog.pg_class WHERE oid = rel), 'MEMBER')
$$;

-- Whether a write of `tbl` is ops.audit_link's own: a link appended or a head written, as
-- the tables' owner, from inside the trigger, while it says it is linking.
CREATE FUNCTION ops.audit_linking(rel oid, tbl name, op text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_trigger_depth() > 1
       AND coalesce(pg_catalog.current_setting('mm.audit_linking', true), '') = 'on'
       AND ((tbl = 'audit_chain' AND op = 'INSERT')
            OR (tbl = 'audit_chain_head' AND op IN ('INSERT', 'UPDATE')))
       AND ops.audit_owns(rel)
$$;

-- The maintenance path's reason, when this transaction is on it and its role owns `rel`.
CREATE FUNCTION ops.audit_maintenance(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT reason
      FROM (SELECT nullif(pg_catalog.btrim(
                       pg_catalog.current_setting('mm.audit_maintenance', true)), '') AS reason) r
     WHERE ops.audit_owns(rel)
$$;

-- Refuses what would change the trail: UPDATE, DELETE and TRUNCATE of entries and links,
-- and any write of links or the head but ops.audit_link's own.
CREATE FUNCTION ops.audit_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF ops.audit_linking(TG_RELID, TG_TABLE_NAME, TG_OP) THEN
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

-- Every statement on the maintenance path appends an entry saying so (into the chain),
-- whether run directly or from inside a trigger: only ops.audit_link's own writes do not.
CREATE FUNCTION ops.audit_maintenance_entry() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF ops.audit_linking(TG_RELID, TG_TABLE_NAME, TG_OP) THEN
        RETURN NULL;
    END IF;
    INSERT INTO ops.audit_entries (actor, action, details, target, outcome)
    VALUES (session_user, 'audit_maintenance',
            pg_catalog.jsonb_build_object(
                'reason', ops.audit_maintenance(TG_RELID), 'operation', TG_OP,
                'role', current_user, 'trigger_depth', pg_catalog.pg_trigger_depth() - 1),
            'ops.' || TG_TABLE_NAME, 'succeeded');
    RETURN NULL;
END $$;

CREATE TRIGGER audit_entries_maintained AFTER UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_entries FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_maintenance_entry();
CREATE TRIGGER audit_chain_maintained AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_chain FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_maintenance_entry();
CREATE TRIGGER audit_chain_head_maintained AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ops.audit_chain_head FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_maintenance_entry();

-- What an entry may say as it is written. Dated when it is written (its transaction's
-- start, or up to a minute later), never before or later, with the id its identity draws
-- then: only the owner (seeds, tests) writes a moment or an id of its choosing. A settlement settles an existing entry that is not a
-- settlement itself, as the same person, action, job, role and target: one that did not
-- would be hidden from ops.audit_log, or put words in another entry's mouth.
CREATE FUNCTION ops.audit_entry_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    settled ops.audit_entries;
BEGIN
    IF (NEW.occurred_at < pg_catalog.now()
        OR NEW.occurred_at > pg_catalog.clock_timestamp() + interval '1 minute')
       AND NOT ops.audit_owns(TG_RELID) THEN
        RAISE EXCEPTION 'ops.audit_entries: an entry is dated when it is written (% is not)',
                        NEW.occurred_at
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Its id drawn as it is written (never OVERRIDING SYSTEM VALUE): a settlement given an
    -- id left free before another's would be read as the entry's first ending.
    IF NEW.id IS DISTINCT FROM pg_catalog.currval(
           pg_catalog.pg_get_serial_sequence('ops.audit_entries', 'id'))
       AND NOT ops.audit_owns(TG_RELID) THEN
        RAISE EXCEPTION 'ops.audit_entries: an entry''s id is drawn as it is written (% is not)',
                        NEW.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.settles IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO settled FROM ops.audit_entries WHERE id = NEW.settles;
    IF NOT FOUND OR settled.settles IS NOT NULL
       OR (NEW.actor, NEW.action, NEW.job_name, NEW.role, NEW.target)
          IS DISTINCT FROM
          (settled.actor, settled.action, settled.job_name, settled.role, settled.target) THEN
        RAISE EXCEPTION 'ops.audit_entries: entry % cannot settle entry %', NEW.id, NEW.settles
            USING ERRCODE = 'check_violation',
                  HINT = 'A settlement names an entry that is not one itself, with its person, '
                         'action, job, role and target (audit.settle, audit.annotate).';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER audit_entries_check BEFORE INSERT ON ops.audit_entries
    FOR EACH ROW EXECUTE FUNCTION ops.audit_entry_check();

-- The entries as they read today, each with its own fields: its settlements only add to
-- it. The outcome of an entry still `allowed` (or without one) is its first settlement's
-- (an ending is not rewritten later); the run id of one without is its first settlement's;
-- its details gain the keys it does not hold (a later settlement's value for a key wins
-- over an earlier's). A settlement is never shown as an entry of its own.
CREATE VIEW ops.audit_log AS
SELECT e.id, e.occurred_at, e.actor, e.action, e.job_name,
       coalesce(e.run_id, s.run_id) AS run_id,
       CASE WHEN s.patch IS NULL THEN e.details ELSE s.patch || e.details END AS details,
       e.role, e.target,
       CASE WHEN e.outcome IS NULL OR e.outcome = 'allowed'
            THEN coalesce(s.outcome, e.outcome) ELSE e.outcome END AS outcome
  FROM ops.audit_entries e
  LEFT JOIN LATERAL (
       SELECT (array_agg(x.outcome ORDER BY x.id)
                   FILTER (WHERE x.outcome IS NOT NULL))[1] AS outcome,
              (array_agg(x.run_id ORDER BY x.id)
                   FILTER (WHERE x.run_id IS NOT NULL))[1] AS run_id,
              jsonb_object_agg(kv.key, kv.value ORDER BY x.id)
                   FILTER (WHERE kv.key IS NOT NULL) AS patch
         FROM ops.audit_entries x
         LEFT JOIN LATERAL jsonb_each(x.details) kv ON true
        WHERE x.settles = e.id
  ) s ON true
 WHERE e.settles IS NULL;

CREATE FUNCTION ops.audit_log_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO ops.audit_entries
           (occurred_at, actor, action, job_name, run_id, details, role, target, outcome)
    VALUES (coalesce(NEW.occurred_at, pg_catalog.now()), NEW.actor, NEW.action, NEW.job_name,
            NEW.run_id, coalesce(NEW.details, '{}'::jsonb), NEW.role, NEW.target,
            NEW.outcome)
    RETURNING id, occurred_at, details INTO NEW.id, NEW.occurred_at, NEW.details;
    RETURN NEW;
END $$;

CREATE FUNCTION ops.audit_log_refuse() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
    chain_head      text,            -- the audit chain's head at the period's end
    public_key      text NOT NULL
);
CREATE INDEX evidence_bundles_period_idx ON ops.evidence_bundles (period, generated_at);
