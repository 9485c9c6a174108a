"""`bench`: quality with TREC runs and latency for every system a workspace holds; `bench --scale`."""
