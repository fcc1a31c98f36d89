-- Move the digest clock forward to this run's instant (never back), with the zone rules it ran under.
INSERT INTO ops.digest_clock (id, evaluated_through, rules) VALUES (1, %s, %s)
ON CONFLICT (id) DO UPDATE SET evaluated_through =
    greatest(ops.digest_clock.evaluated_through, excluded.evaluated_through),
    rules = CASE WHEN excluded.evaluated_through
                      >= ops.digest_clock.evaluated_through
                 THEN excluded.rules ELSE ops.digest_clock.rules END
