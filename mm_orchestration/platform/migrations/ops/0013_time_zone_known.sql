-- Whether PostgreSQL knows a time zone name, without reading its whole list
-- (pg_timezone_names reads every zone file: ~8 ms a call). The digest checks each of the
-- few distinct zones its people chose, so that `AT TIME ZONE` never raises for one row.
CREATE FUNCTION ops.time_zone_known(name text) RETURNS boolean
    LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    PERFORM now() AT TIME ZONE name;
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END
$$;
