-- Text to jsonb for one row at a time, NULL where the text is not JSON (or too deep to
-- parse), so a query over many rows never fails because one of them holds bad text.
-- PostgreSQL 16 has pg_input_is_valid() for this; we also support 15.
CREATE FUNCTION ops.jsonb_or_null(body text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN body::jsonb;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;
