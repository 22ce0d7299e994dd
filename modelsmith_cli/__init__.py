"""The top floor: the `modelsmith` command line and the headless loop, which drive Dagster and everything below."""
