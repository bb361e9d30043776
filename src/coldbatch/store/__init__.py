"""Server storage: metadata (SQLite by default) and file bytes (a local folder by default)."""
