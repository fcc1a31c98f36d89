-- Everyone who may get a digest; the tenant and user parameters narrow it for an operator's "send now".
SELECT u.id, u.tenant_id, u.email, u.display_name, t.name AS tenant_name
  FROM portal.users u
  JOIN portal.tenants t ON t.id = u.tenant_id AND t.status = 'active'
 WHERE u.digest_opt_in AND u.deactivated_at IS NULL
   AND (%(tenant)s::uuid IS NULL OR u.tenant_id = %(tenant)s::uuid)
   AND (%(user)s::uuid IS NULL OR u.id = %(user)s::uuid)
