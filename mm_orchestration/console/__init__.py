"""The job console: Dagster's own webserver behind a thin layer of ours that knows who is
asking (`access`, `access_settings`), decides what their role allows (`policy`, over
`mutations` and `graphql_args`), audits every action as it happens (`middleware`,
`audit_log`) and serves report downloads (`routes`, `downloads`); `front` is the outermost
ASGI layer, `webserver` what we change in Dagster's webserver, and `dagster_private` the
one module that touches Dagster's private API."""
