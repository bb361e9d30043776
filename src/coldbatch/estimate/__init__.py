"""Token counts and money: before a job (estimate) and after it (usage → cost)."""
