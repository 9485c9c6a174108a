"""The command line: Typer wiring, rendering, the query prompt and quickstart (the only layer that touches a
terminal)."""
