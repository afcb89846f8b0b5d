"""Nearest-centroid probe: each sense is the mean of its training vectors; a vector gets the nearest sense.

This is the 1-nearest-neighbour-to-sense-centroid method of the CoarseWSD-20 paper (Loureiro et al.,
2021): the centroid is the mean of a sense's raw training vectors, and a vector takes the sense whose
centroid is most similar by cosine. It has no weights to fit beyond the centroids, so where it does well,
the senses form separate clusters, not just linearly separable regions. Use it with
``probe: nearest-centroid``; ``centroids: normalised`` gives this probe's earlier rule instead (the mean of
unit-length vectors, nearest by Euclidean distance), which ranks differently when vectors' lengths vary.
"""

from probe import hookimpl

CENTROIDS = ("raw", "normalised")


def nearest_centroid_probe(seed: int = 0, metric: str = "cosine", standardize: bool = False,
                           centroids: str = "raw"):
    """Cosine to the mean of each sense's raw vectors (the paper's rule; ``centroids: normalised``: Euclidean
    to the mean of unit-length vectors); ``metric: euclidean``: scikit-learn's NearestCentroid. Optionally
    standardised first."""
    from sklearn.neighbors import NearestCentroid  # imported when used: every command loads the plugins
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from probe.science.probes import CosineCentroids

    if centroids not in CENTROIDS:
        raise ValueError(f"centroids must be one of {', '.join(CENTROIDS)}, got {centroids!r}")
    if metric != "cosine":
        steps = [NearestCentroid(metric=metric)]
    elif centroids == "raw":
        steps = [CosineCentroids()]
    else:
        steps = [Normalizer(), NearestCentroid(metric="euclidean")]
    if standardize:
        steps.insert(0, StandardScaler())
    return make_pipeline(*steps)


@hookimpl
def register_probes(register):
    register("nearest-centroid", nearest_centroid_probe)
