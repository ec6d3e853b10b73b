"""End-to-end jobs behind the CLI (render, train, eval)."""
