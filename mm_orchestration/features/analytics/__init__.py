"""The hourly analytics rollup of portal activity."""
