"""Package data: the versioned price table."""
