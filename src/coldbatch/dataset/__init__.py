"""Reading and writing tables row-batch by row-batch: CSV, TSV, JSONL, Parquet, and in-memory tables."""
