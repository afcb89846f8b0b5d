"""`probe sweep`: one experiment over many words, models and seeds, each cell a whole run; cells in worker
processes or on Ray, logged to MLflow, gathered into one table and page."""
