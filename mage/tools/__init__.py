"""Tool calling for Any-to-Any output: tool registry, call parser, executors, data and metrics."""
