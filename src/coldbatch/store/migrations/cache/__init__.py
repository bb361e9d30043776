"""The result cache's schema migrations (applied by `store/sqlite_db.py`)."""
