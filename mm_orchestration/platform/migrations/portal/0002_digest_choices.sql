-- Each person's digest choice (the portal's contract, ../shared/design/portal-database.md):
-- how often, at what local time, and on which ISO weekday when weekly. Existing rows get
-- what everyone had: daily at 08:00, now in their own time zone.
ALTER TABLE portal.users
    ADD COLUMN digest_frequency text NOT NULL DEFAULT 'daily'
        CHECK (digest_frequency IN ('daily', 'weekdays', 'weekly', 'off')),
    ADD COLUMN digest_time      time NOT NULL DEFAULT '08:00',
    ADD COLUMN digest_weekday   smallint NOT NULL DEFAULT 1
        CHECK (digest_weekday BETWEEN 1 AND 7);
