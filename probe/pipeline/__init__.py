"""One experiment as stages over typed values: config, data, models, extraction, fits, results, the run."""
