"""The durable job runner: prepare → submit → poll → collect → retry → join → OUTPUT, with a ledger."""
