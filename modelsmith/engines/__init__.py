"""Plain engines the Dagster resources configure: inference, the Claude critic, the Ed25519 signer.

Nothing here imports Dagster; resources (`resources/`) and the CLI import these, never the reverse.
"""
