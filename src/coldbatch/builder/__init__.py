"""Dataset → provider-ready request files: build lines, check ids, shard, write, manifest."""
