-- One hour's events per tenant and type with distinct users: two hash aggregations, the hour read once through the occurred_at index.
INSERT INTO ops.analytics_hourly (tenant_id, hour_start, event_type, event_count, unique_users)
SELECT tenant_id, %(start)s, event_type, sum(n), count(user_id)
  FROM (SELECT tenant_id, event_type, user_id, count(*) AS n
          FROM portal.events
         WHERE occurred_at >= %(start)s AND occurred_at < %(end)s
         GROUP BY tenant_id, event_type, user_id) per_user
 GROUP BY tenant_id, event_type
