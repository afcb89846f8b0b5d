"""Built-in metrics, computed on pooled out-of-fold predictions."""

from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

from probe.hookspecs import hookimpl


@hookimpl
def register_metrics(register):
    register("balanced_accuracy", lambda y_true, y_pred, labels: balanced_accuracy_score(y_true, y_pred))
    register("cohen_kappa", lambda y_true, y_pred, labels: cohen_kappa_score(y_true, y_pred, labels=labels))
