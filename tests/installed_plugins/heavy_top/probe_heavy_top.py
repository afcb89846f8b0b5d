"""A plugin as many are first written: scikit-learn imported at the top of the module, so importing the
plugin costs what importing scikit-learn costs. The tests install it through an entry point (this folder on
PYTHONPATH: the .dist-info beside it declares it) to check which commands import plugin modules."""

from sklearn.linear_model import RidgeClassifier

from probe import hookimpl


def ridge(seed: int = 0, **options):
    return RidgeClassifier(random_state=seed, **options)


@hookimpl
def register_probes(register):
    register("ridge-top", ridge)
