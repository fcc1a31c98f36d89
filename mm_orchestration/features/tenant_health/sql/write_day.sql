-- Each active tenant's health as of the reference time (06:00 local on the day): each count a grouped scan, joined by tenant.
-- Set-based whatever the number of tenants.
INSERT INTO ops.tenant_health_daily (tenant_id, day, milestones_at_risk, overdue_tasks,
                                     active_share_links, share_link_views, status,
                                     overdue_milestones)
SELECT t.id, %(day)s,
       coalesce(m.at_risk, 0), coalesce(k.overdue, 0), coalesce(l.active, 0),
       coalesce(l.views, 0),
       CASE WHEN coalesce(m.overdue, 0) > 0 THEN 'red'
            WHEN coalesce(m.at_risk, 0) > 0 OR coalesce(k.overdue, 0) > %(amber_tasks)s
                 THEN 'amber'
            ELSE 'green' END,
       coalesce(m.overdue, 0)
  FROM portal.tenants t
  LEFT JOIN (SELECT tenant_id,
                    count(*) FILTER (WHERE due_at < %(ref)s + %(risk)s) AS at_risk,
                    count(*) FILTER (WHERE due_at < %(ref)s) AS overdue
               FROM portal.milestones
              WHERE (completed_at IS NULL OR completed_at > %(ref)s) AND due_at IS NOT NULL
              GROUP BY tenant_id) m ON m.tenant_id = t.id
  LEFT JOIN (SELECT tenant_id, count(*) AS overdue
               FROM portal.tasks
              WHERE (completed_at IS NULL OR completed_at > %(ref)s) AND due_at < %(ref)s
              GROUP BY tenant_id) k ON k.tenant_id = t.id
  LEFT JOIN (SELECT tenant_id,
                    count(*) FILTER (WHERE status = 'active'
                                       AND (expires_at IS NULL OR expires_at > %(ref)s))
                        AS active,
                    sum(view_count) AS views
               FROM portal.share_links
              GROUP BY tenant_id) l ON l.tenant_id = t.id
 WHERE t.status = 'active'
