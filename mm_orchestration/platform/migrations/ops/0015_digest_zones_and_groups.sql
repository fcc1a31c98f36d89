-- Our time zone rules (the pinned tzdata's), for SQL to read a person's local time by:
-- each zone's history as spans of one UTC offset, written by the digest for its rules
-- version (zones.offsets). PostgreSQL's own zone files may be older or newer than ours;
-- the digest never asks them (AT TIME ZONE) for a person's local time.
CREATE TABLE ops.zone_spans (
    rules      text NOT NULL,         -- the IANA release of the rules, e.g. 2026f
    zone       text NOT NULL,
    starts     timestamptz NOT NULL,
    ends       timestamptz NOT NULL,
    utc_offset integer NOT NULL,      -- seconds east of UTC
    PRIMARY KEY (rules, zone, starts)
);
-- How far ahead each zone's spans were worked out (written a year ahead, renewed).
CREATE TABLE ops.zone_rules (
    rules       text NOT NULL,
    zone        text NOT NULL,
    valid_until timestamptz NOT NULL,
    PRIMARY KEY (rules, zone)
);

-- The people of each distinct digest choice as the last scheduled run saw them: how many,
-- and a checksum of their ids. A group whose people changed (someone moved to it: a new
-- zone, time or frequency, a new or returning person) is looked at a whole period back,
-- so that the moment their new choice already passed today is not lost; every other
-- group only in the run's own window.
CREATE TABLE ops.digest_groups (
    choice_key text PRIMARY KEY,
    people     integer NOT NULL,
    checksum   bigint NOT NULL
);

-- The zone rules (IANA release) the last scheduled run used: when they change (a tzdata
-- upgrade brings a country's new law), moments may have moved across the window, so the
-- next run looks a whole period back for everyone.
ALTER TABLE ops.digest_clock ADD COLUMN rules text;
