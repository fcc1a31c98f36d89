-- ops.residency_reports.storage_uri and html_uri hold absolute URIs from now on:
-- file:///... for the local folder store, s3://bucket/prefix/key for S3.
--
-- Rows written before this migration hold a key relative to the report store that
-- wrote them (residency/2026-11-30/residency-2026-11-30.csv). SQL cannot know that
-- store's root (a folder on the machine that ran the job, or an S3 bucket named in
-- its environment), so this migration does not guess: the residency_report asset,
-- which has the store, rewrites each such column to the store's URI on its next run,
-- but only when the file at that key still has the recorded SHA-256, and writes an
-- ops.audit_log entry ('residency_report_uri_rewritten') for every rewrite. Until
-- then the download endpoint still serves such a row by its key (hash checked), and
-- a key whose file is no longer in the store stays as it is and is named in the
-- asset's run log and metadata (legacy_rows_unresolved).
--
-- Rows still to be rewritten:
--   SELECT week_start, storage_uri, html_uri FROM ops.residency_reports
--    WHERE storage_uri !~ '^[a-z][a-z0-9+.-]*://' OR html_uri !~ '^[a-z][a-z0-9+.-]*://';
COMMENT ON COLUMN ops.residency_reports.storage_uri IS
    'Absolute URI of the week''s CSV: file:///... (local report store) or s3://bucket/key. '
    'A relative key is a row from before migration 0006 that residency_report has not '
    'yet been able to prove and rewrite.';
COMMENT ON COLUMN ops.residency_reports.html_uri IS
    'Absolute URI of the week''s HTML page: file:///... (local report store) or '
    's3://bucket/key. A relative key: see storage_uri.';
COMMENT ON COLUMN ops.residency_reports.exceptions IS
    'The tenants with at least one exception row (one entry per tenant; a name two '
    'tenants share carries the tenant id).';
