-- Every row of the residency report, built in the database: the million videos are
-- aggregated to one row per tenant and region here, so Python only ever holds the report
-- itself. A tenant's backups are where its database is: Neon keeps a project's backups and
-- history (point-in-time restore) in the project's own region. The vendors' rows come in as
-- arrays (regions.toml); `spaces` is what Python's str.strip() removes, so a region is
-- trimmed alike here and in the lookup.
WITH regions AS (
    SELECT tenant_id,
           coalesce(nullif(btrim(storage_region, %(spaces)s), ''), 'unknown') AS region,
           count(*) AS videos
      FROM portal.media_assets
     WHERE status <> 'deleted'
     GROUP BY 1, 2
), vendors AS (
    SELECT * FROM unnest(%(v_system)s::text[], %(v_vendor)s::text[], %(v_categories)s::text[],
                         %(v_region)s::text[], %(v_source)s::text[])
             WITH ORDINALITY AS v(system, vendor, categories, region, source, ord)
), places AS (
    SELECT t.id, t.name, 0 AS ord, 'portal database' AS system, 'Neon (PostgreSQL)' AS vendor,
           %(db_categories)s AS categories,
           coalesce(nullif(btrim(t.data_region, %(spaces)s), ''), 'unknown') AS region,
           'portal.tenants.data_region' AS evidence, true AS judged
      FROM portal.tenants t
    UNION ALL
    SELECT t.id, t.name, 1, 'backups', 'Neon', %(backup_categories)s,
           coalesce(nullif(btrim(t.data_region, %(spaces)s), ''), 'unknown'),
           %(backup_evidence)s, true
      FROM portal.tenants t
    UNION ALL
    SELECT t.id, t.name, 2, 'video storage', 'Mux', %(video_categories)s, r.region,
           'portal.media_assets.storage_region (' || r.videos || ' videos)', true
      FROM portal.tenants t JOIN regions r ON r.tenant_id = t.id
    UNION ALL
    SELECT t.id, t.name, 2 + v.ord, v.system, v.vendor, v.categories, v.region, v.source, false
      FROM portal.tenants t CROSS JOIN vendors v
)
SELECT id::text AS tenant_id, name AS tenant, system, vendor, categories AS data_categories,
       region, evidence, judged
  FROM places
 ORDER BY name, id, ord, region
