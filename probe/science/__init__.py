"""What turns numbers into evidence: the probes and their cross-validation, control tasks, the permutation
test, concept erasure. Pure functions over arrays and estimators; they know nothing of configs or runs
(the pipeline wires them into an experiment)."""
