-- What one person's digest would say now, with our zone rules handed in as rows; reads only.
WITH spans AS (
    SELECT %(rules)s::text AS rules, z.*
      FROM unnest(%(span_zone)s::text[], %(span_starts)s::timestamptz[],
                  %(span_ends)s::timestamptz[], %(span_offset)s::int[])
        AS z(zone, starts, ends, utc_offset)
), people AS (
    SELECT e.*, %(zone)s::text AS zone, %(period)s::text AS period,
           %(local_date)s::date AS local_date, %(horizon)s::timestamptz AS horizon,
           %(now)s::timestamptz - %(period_length)s::interval AS since_default
      FROM ({eligible}) e
), senders AS (
    SELECT p.*, {since} AS since, {suppressed} AS suppressed FROM people p
), digests AS ({content})
SELECT d.id, d.suppressed, {payload} FROM digests d
