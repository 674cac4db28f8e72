"""Many machines: the Ray cluster and job-array shards."""
