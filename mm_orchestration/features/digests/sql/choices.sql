-- The distinct digest choices of the eligible people, each once, with how many made it and a checksum of who.
SELECT {raw}, u.timezone, u.digest_frequency::text, u.digest_time, u.digest_weekday, count(*),
       sum(uuid_hash(u.id)::bigint)
  FROM portal.users u
  JOIN portal.tenants t ON t.id = u.tenant_id AND t.status = 'active'
 WHERE u.digest_opt_in AND u.deactivated_at IS NULL
   AND (%(tenant)s::uuid IS NULL OR u.tenant_id = %(tenant)s::uuid)
   AND (%(user)s::uuid IS NULL OR u.id = %(user)s::uuid)
 GROUP BY u.timezone, u.digest_frequency, u.digest_time, u.digest_weekday
