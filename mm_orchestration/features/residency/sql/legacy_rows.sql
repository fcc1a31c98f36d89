-- Reports recorded before migration 0006 hold a key relative to the store that wrote them.
SELECT week_start, storage_uri, sha256, html_uri, html_sha256
  FROM ops.residency_reports
 WHERE storage_uri !~ '^[a-z][a-z0-9+.-]*://' OR html_uri !~ '^[a-z][a-z0-9+.-]*://'
 ORDER BY week_start
