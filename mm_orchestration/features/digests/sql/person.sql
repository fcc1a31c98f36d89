-- Who USER names (by id, else by address in any case), with each reason the digest would leave them out: the job's own rule (eligible.sql, and frequency off).
SELECT u.id, array_remove(ARRAY[
           CASE WHEN NOT u.digest_opt_in THEN 'opted out (digest_opt_in is false)' END,
           CASE WHEN u.digest_frequency::text = 'off' THEN 'digest frequency is off' END,
           CASE WHEN u.deactivated_at IS NOT NULL
                THEN 'deactivated at ' || to_char(u.deactivated_at AT TIME ZONE 'UTC',
                                                  'YYYY-MM-DD HH24:MI"Z"') END,
           CASE WHEN t.status IS DISTINCT FROM 'active'
                THEN 'their agency is ' || coalesce(t.status, 'missing') END], NULL)
  FROM portal.users u
  LEFT JOIN portal.tenants t ON t.id = u.tenant_id
 WHERE CASE WHEN %(id)s::uuid IS NOT NULL THEN u.id = %(id)s::uuid
            ELSE lower(btrim(u.email)) = lower(btrim(%(email)s)) END
 ORDER BY u.id
