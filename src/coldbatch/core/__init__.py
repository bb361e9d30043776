"""Pure logic: no network, no database, no file handles. Everything here is testable without fixtures."""
