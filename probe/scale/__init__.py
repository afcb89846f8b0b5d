"""Where work runs: devices and dtypes, torchrun/accelerate ranks, max_memory placement, BLAS and worker
limits. Below the pipeline, which asks it where to put a model and how many workers to start."""
