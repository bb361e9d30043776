"""Client side: the remote Batch APIs a job submits to (OpenAI, Azure OpenAI, coldbatch serve)."""
