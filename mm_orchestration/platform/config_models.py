"""Config and resource models whose validation errors never quote the value refused.

Dagster reads `{env: NAME}` in a run config's string and number fields, so a field's
value may be any environment variable's (the database URL, the SendGrid key). pydantic
adds `input_value=...` to every validation error, which Dagster then shows in the run's
event log and the failure summary; these models leave it out (`hide_input_in_errors`),
and their validators name the field and what is accepted, never the value.
"""

from __future__ import annotations

from dagster import Config
from pydantic import ConfigDict

# For every op config, and for every ConfigurableResource (`model_config = QUIET`).
QUIET = ConfigDict(hide_input_in_errors=True)


class OpConfig(Config):
    """An op's run config: pydantic's errors leave the value out."""

    model_config = QUIET
