"""Server-side engines: what actually answers one request line (echo fixture, llama.cpp, relay, ...)."""
