-- What a digest says, per sender: open tasks due before their horizon, overdue tasks, and their agency's video updates since their last digest.
SELECT s.*, t.due_soon, t.overdue, a.updates
  FROM senders s
  LEFT JOIN LATERAL (
      SELECT jsonb_agg(item ORDER BY k.due_at, k.title)
                 FILTER (WHERE k.due_at >= %(now)s) AS due_soon,
             jsonb_agg(item ORDER BY k.due_at, k.title)
                 FILTER (WHERE k.due_at < %(now)s) AS overdue
        FROM portal.tasks k
        LEFT JOIN portal.projects p ON p.id = k.project_id
       CROSS JOIN LATERAL (SELECT jsonb_build_object(
               'title', k.title, 'project', p.name, 'due_at', k.due_at,
               'due_local', to_char((k.due_at AT TIME ZONE 'UTC') + make_interval(secs => (
                   SELECT z.utc_offset FROM {spans} z
                    WHERE z.rules = %(rules)s AND z.zone = s.zone
                      AND z.starts <= k.due_at AND k.due_at < z.ends)),
                   'Dy DD Mon YYYY HH24:MI')) AS item) i
       WHERE k.assignee_id = s.id AND k.completed_at IS NULL AND k.due_at < s.horizon
  ) t ON NOT s.suppressed
  LEFT JOIN LATERAL (
      SELECT jsonb_agg(jsonb_build_object('title', m.title, 'status', m.status,
                                          'changed_at', m.status_changed_at)
                       ORDER BY m.status_changed_at, m.title) AS updates
        FROM portal.media_assets m
       WHERE m.tenant_id = s.tenant_id AND m.status IN ('ready', 'errored')
         AND m.status_changed_at >= s.since AND m.status_changed_at < %(now)s
  ) a ON NOT s.suppressed
