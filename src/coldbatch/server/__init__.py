"""`coldbatch serve`: an OpenAI-compatible Files + Batches API over pluggable engines."""
