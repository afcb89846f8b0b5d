"""Nearest-centroid probe: each sense is the mean of its training vectors; a vector gets the nearest sense.

This is the 1-nearest-neighbour-to-sense-centroid method of the CoarseWSD-20 paper (Loureiro et al.,
2021). It has no weights to fit beyond the centroids, so where it does well, the senses form separate
clusters, not just linearly separable regions. Use it with ``probe: nearest-centroid``.
"""

from probe import hookimpl


def nearest_centroid_probe(seed: int = 0, metric: str = "cosine", standardize: bool = False):
    """Cosine distance to each sense's centroid (the paper's choice); optionally standardised first."""
    from sklearn.neighbors import (
        NearestCentroid,  # imported when used: `probe --help` loads every plugin
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if metric == "cosine":
        # NearestCentroid has no cosine metric: on unit-length vectors, euclidean ranks like cosine.
        from sklearn.preprocessing import Normalizer

        steps = [Normalizer(), NearestCentroid(metric="euclidean")]
    else:
        steps = [NearestCentroid(metric=metric)]
    if standardize:
        steps.insert(0, StandardScaler())
    return make_pipeline(*steps)


@hookimpl
def register_probes(register):
    register("nearest-centroid", nearest_centroid_probe)
