"""The job ledger's schema migrations (applied by `store/sqlite_db.py`)."""
