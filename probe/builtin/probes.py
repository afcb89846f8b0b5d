"""Built-in probe: standardised features into an L2 logistic regression."""

from probe.hookspecs import hookimpl
from probe.probes import logistic_probe


@hookimpl
def register_probes(register):
    register("logreg", logistic_probe)
