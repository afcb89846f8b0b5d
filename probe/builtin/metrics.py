"""Built-in metrics, computed on pooled out-of-fold predictions."""

from probe.hookspecs import hookimpl


def balanced_accuracy(y_true, y_pred, labels):
    from sklearn.metrics import balanced_accuracy_score

    return balanced_accuracy_score(y_true, y_pred)


def cohen_kappa(y_true, y_pred, labels):
    from sklearn.metrics import cohen_kappa_score

    return cohen_kappa_score(y_true, y_pred, labels=labels)


@hookimpl
def register_metrics(register):
    register("balanced_accuracy", balanced_accuracy)
    register("cohen_kappa", cohen_kappa)
