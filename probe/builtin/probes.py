"""Built-in probes: standardised features into an L2 logistic regression (classes) or a ridge regression
(numbers)."""

from probe.hookspecs import hookimpl


def logreg(seed: int = 0, **options):
    """probe.science.probes.logistic_probe, imported when first used (scikit-learn is slow to import)."""
    from probe.science.probes import logistic_probe

    return logistic_probe(seed=seed, **options)


logreg.forwards_to = "probe.science.probes:logistic_probe"  # the options a config may give (probe.pipeline.checks reads these)


def ridge(seed: int = 0, **options):
    """probe.science.regression.ridge_probe, imported when first used: a probe for numeric labels."""
    from probe.science.regression import ridge_probe

    return ridge_probe(seed=seed, **options)


ridge.forwards_to = "probe.science.regression:ridge_probe"


def sgd(seed: int = 0, **options):
    """probe.science.probes.StreamingLogistic: a logistic regression by SGD over blocks of rows, for more rows
    than memory holds (an approximation of logreg; see docs/scale.md)."""
    from probe.science.probes import StreamingLogistic

    return StreamingLogistic(seed=seed, **options)


sgd.forwards_to = "probe.science.probes:StreamingLogistic"


@hookimpl
def register_probes(register):
    register("logreg", logreg)
    register("ridge", ridge)
    register("sgd", sgd)
