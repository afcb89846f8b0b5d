"""probe's own datasets, probes, metrics, reporters and model sources, registered as plugins."""
