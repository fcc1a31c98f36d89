-- The readable HTML copy of each weekly residency report, with its own hash.
ALTER TABLE ops.residency_reports
    ADD COLUMN html_uri text,
    ADD COLUMN html_sha256 text,
    ADD COLUMN exceptions jsonb NOT NULL DEFAULT '[]'::jsonb;
