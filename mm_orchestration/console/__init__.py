"""The job console: Dagster's own webserver behind a thin layer of ours that knows who is
asking (`access`), decides what their role allows and audits every action as it happens
(`mutations`, `gate`), and serves report downloads (`app`)."""
