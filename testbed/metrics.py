"""Identity quality of generated novel identities: consistency, separability, novelty, diversity (pure numpy).

Inputs are the unit embeddings ``e: (N, D)`` of the generated images whose face was detected, their
identity labels ``(N,)`` in 0..M-1 (the context that made them), and for novelty the unit embeddings
``t: (R, D)`` of the model's training faces. Definitions (scores are cosine similarities):

* verification (:func:`evaluation.metrics.verification_metrics`): genuine = all pairs of images of
  one identity, impostor = all pairs of images of two identities; EER, FMR100, FDR, means and stds.
* identity match: share of images whose nearest identity centre is their own, the own centre taken
  without the image itself (leave-one-out; an identity needs two detected images to take part).
* novelty of identity k: ``s_k = max_n mean_i cos(e_ki, t_n) = max_n (mean_i e_ki) . t_n``, the score
  of the training face most similar to the identity, averaged over the identity's images, so that it
  is on the scale of a genuine score. Leakage share: identities with ``s_k`` above the EER threshold
  (a training face would be accepted as that identity). Copy share: identities with ``s_k`` above
  their own mean genuine score ``g_k`` (a training face is as close to them as they are to themselves).
* diversity: the mean over identities of the mean pairwise L2 distance of its unit embeddings
  (``sqrt(2 - 2 cos)``); pixel diversity: the same with the RMS difference of the images in [0, 1].
* confidence intervals (:func:`identity_bootstrap`): identities are the sampling unit, so the 95 %
  intervals of the EER and of the identity match resample identities with replacement (B times):
  identity k drawn w_k times weighs its genuine pairs by w_k and a pair of identities k != l by
  w_k w_l; the EER of a draw is where its weighted FMR and FNMR curves cross.
* source match (held-out contexts): share of images whose nearest source (the held-out face whose
  embedding was the context), by embedding or by pixels, is their own source.
"""
from __future__ import annotations

import numpy as np

from evaluation.identity import nearest_similarity
from evaluation.metrics import check_embeddings, genuine_scores, impostor_scores, verification_metrics


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices of each label 0..max (empty arrays for absent labels)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(int(labels.max()) + 2))
    return [order[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]


def _own_centre_matches(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: whether its nearest (cosine) identity centre is its own leave-one-out centre, and whether
    its identity has the two images that needs. Returns (matched (N,) bool, valid (N,) bool)."""
    n_ids = int(labels.max()) + 1
    sums = np.zeros((n_ids, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, embeddings.astype(np.float64))
    counts = np.bincount(labels, minlength=n_ids)
    centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)  # (M, D)
    scores = embeddings @ centres.T  # (N, M)
    own_sum = sums[labels] - embeddings  # (N, D) the identity without the image
    own = np.einsum("nd,nd->n", embeddings, own_sum) / np.maximum(np.linalg.norm(own_sum, axis=1), 1e-12)
    scores[np.arange(len(labels)), labels] = own
    valid = counts[labels] >= 2
    return (scores.argmax(axis=1) == labels) & valid, valid


def identity_match(embeddings: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Share of images nearest (cosine) to their own leave-one-out identity centre; and how many took part.

    Args:
        embeddings: (N, D) unit rows; labels: (N,) identities 0..M-1.
    Returns:
        (share, n) over the n images whose identity has at least two images.
    """
    matched, valid = _own_centre_matches(embeddings, labels)
    if not valid.any():
        return float("nan"), 0
    return float(matched[valid].mean()), int(valid.sum())


def mean_pairwise_distance(x: np.ndarray, labels: np.ndarray, rms: bool = False) -> float:
    """Mean over identities (with >= 2 rows) of the mean pairwise distance of their rows.

    Args:
        x: (N, F) rows (unit embeddings, or flattened images in [0, 1]).
        labels: (N,) identities.
        rms: distance = root-mean-square difference (``|a - b| / sqrt(F)``) instead of L2.
    """
    values = []
    for rows in _groups(labels):
        if len(rows) < 2:
            continue
        block = x[rows].astype(np.float64)
        squared = (block**2).sum(axis=1)
        d2 = np.clip(squared[:, None] + squared[None, :] - 2 * block @ block.T, 0, None)
        d = np.sqrt(d2[np.triu_indices(len(rows), k=1)] / (x.shape[1] if rms else 1))
        values.append(d.mean())
    return float(np.mean(values)) if values else float("nan")


def novelty(embeddings: np.ndarray, labels: np.ndarray, train: np.ndarray) -> dict[str, np.ndarray]:
    """Per identity: the nearest training face by mean score, that score and the identity's mean genuine score.

    Args:
        embeddings: (N, D) unit rows of the generated images; labels: (N,) 0..M-1.
        train: (R, D) unit embeddings of the training faces.
    Returns:
        ``max_cos`` (M,) s_k, ``nearest`` (M,) index n of the training face, ``genuine_mean`` (M,) g_k
        (NaN for identities with fewer than two images), ``n_images`` (M,).
    """
    groups = _groups(labels)
    means = np.stack([embeddings[rows].mean(axis=0) if len(rows) else np.zeros(embeddings.shape[1]) for rows in groups])
    max_cos, nearest = nearest_similarity(means.astype(np.float32), train.astype(np.float32))
    genuine = np.full(len(groups), np.nan)
    for k, rows in enumerate(groups):
        if len(rows) >= 2:
            sims = embeddings[rows] @ embeddings[rows].T
            genuine[k] = sims[np.triu_indices(len(rows), k=1)].mean()
    return {"max_cos": max_cos.astype(np.float64), "nearest": nearest, "genuine_mean": genuine,
            "n_images": np.array([len(rows) for rows in groups])}


def source_match(features: np.ndarray, labels: np.ndarray, sources: np.ndarray, metric: str = "cosine") -> float:
    """Share of rows whose nearest source is their own (``sources[labels[i]]``).

    Args:
        features: (N, F) generated images' embeddings (unit, for cosine) or flattened pixels (for l2).
        labels: (N,) index of each row's source.
        sources: (M, F) the sources in the same space.
        metric: ``cosine`` (highest dot product) or ``l2`` (smallest Euclidean distance).
    """
    if metric == "cosine":
        nearest = (features @ sources.T).argmax(axis=1)
    elif metric == "l2":
        d2 = (features**2).sum(1)[:, None] + (sources**2).sum(1)[None, :] - 2 * features @ sources.T
        nearest = d2.argmin(axis=1)
    else:
        raise ValueError(f"metric must be 'cosine' or 'l2', found {metric!r}")
    return float((nearest == labels).mean())


def crossing_eer(scores: np.ndarray, is_genuine: np.ndarray, weights: np.ndarray | None = None) -> float:
    """EER of weighted pair scores, sorted ascending: at the threshold where FNMR(t) (share of genuine
    weight below t) meets FMR(t) (share of impostor weight at or above t), the mean of the two rates.

    Args:
        scores: (P,) ascending; is_genuine: (P,) bool; weights: (P,) >= 0 (None = 1 each).
    """
    weights = np.ones(len(scores)) if weights is None else weights
    g = np.where(is_genuine, weights, 0.0)
    i = weights - g
    fnmr = np.concatenate([[0.0], np.cumsum(g)]) / g.sum()  # (P+1,) threshold just above the first k scores
    fmr = 1.0 - np.concatenate([[0.0], np.cumsum(i)]) / i.sum()
    between = np.concatenate([[True], scores[1:] > scores[:-1], [True]])  # thresholds never split tied scores
    fnmr, fmr = fnmr[between], fmr[between]
    k = int(np.argmin(np.abs(fnmr - fmr)))
    return float((fnmr[k] + fmr[k]) / 2)


def identity_bootstrap(embeddings: np.ndarray, labels: np.ndarray, n_boot: int = 200, seed: int = 0,
                       level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of the EER and the identity match over identity resamples (module docstring).

    Args:
        embeddings: (N, D) unit rows; labels: (N,) identities 0..M-1, M >= 2.
    Returns:
        ``{"eer_ci": [low, high], "identity_match_ci": [low, high]}`` (fractions).
    """
    labels = np.asarray(labels)
    n_ids = int(labels.max()) + 1
    if n_ids < 2:
        raise ValueError(f"identity_bootstrap needs at least 2 identities, found {n_ids}")
    a, b = np.triu_indices(len(labels), k=1)
    scores = np.einsum("pd,pd->p", embeddings[a], embeddings[b])  # (P,) every pair once
    order = np.argsort(scores, kind="stable")
    scores, la, lb = scores[order], labels[a][order], labels[b][order]
    is_genuine = la == lb
    matched, valid = _own_centre_matches(embeddings, labels)  # fixed per image; their mean is resampled
    hits = np.bincount(labels, weights=matched.astype(np.float64), minlength=n_ids)  # per identity
    n_valid = np.bincount(labels, weights=valid.astype(np.float64), minlength=n_ids)
    rng = np.random.default_rng(seed)
    eers, matches = [], []
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, n_ids, n_ids), minlength=n_ids).astype(np.float64)  # draws per identity
        pair_w = np.where(is_genuine, w[la], w[la] * w[lb])
        if pair_w[is_genuine].sum() == 0 or pair_w[~is_genuine].sum() == 0:
            continue
        eers.append(crossing_eer(scores, is_genuine, pair_w))
        if (w * n_valid).sum() > 0:
            matches.append(float((w * hits).sum() / (w * n_valid).sum()))
    tail = 100 * (1 - level) / 2
    return {"eer_ci": [float(np.percentile(eers, tail)), float(np.percentile(eers, 100 - tail))],
            "identity_match_ci": [float(np.percentile(matches, tail)), float(np.percentile(matches, 100 - tail))]}


def identity_quality(
    embeddings: np.ndarray, labels: np.ndarray, n_identities: int, train: np.ndarray | None = None
) -> dict[str, float]:
    """All embedding metrics of one setting (see the module docstring); rates are fractions.

    Args:
        embeddings: (N, D) embeddings of the detected images; labels: (N,) identities in 0..n_identities-1.
        n_identities: M, the identities sampled; those that lost all their images to detection are
            left out (``n_identities_scored`` counts the rest).
        train: (R, D) training-face embeddings for novelty/leakage (skipped when None).
    """
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_identities):
        raise ValueError(f"labels must lie in 0..{n_identities - 1} (n_identities={n_identities}), "
                         f"found {labels.min()}..{labels.max()}")
    _, labels = np.unique(labels, return_inverse=True)  # identities that lost every image to detection drop out
    embeddings, labels = check_embeddings(embeddings, labels, "generated embeddings")
    genuine = genuine_scores(embeddings, labels)
    if len(genuine) == 0:
        raise ValueError("no identity kept two detected images, so there are no genuine pairs")
    v = verification_metrics(genuine, impostor_scores(embeddings, labels))
    match, n_match = identity_match(embeddings, labels)
    out = {k: v[k] for k in ("eer", "eer_threshold", "fmr100", "fdr", "genuine_mean", "genuine_std",
                             "impostor_mean", "impostor_std")}
    out.update(identity_match=match, n_identity_match=n_match, n_identities_scored=int(labels.max()) + 1,
               diversity=mean_pairwise_distance(embeddings, labels))
    if out["n_identities_scored"] >= 2:
        out.update(identity_bootstrap(embeddings, labels))
    if train is not None:
        train, _ = check_embeddings(train, None, "training embeddings")
        nov = novelty(embeddings, labels, train)
        present = nov["n_images"] >= 2
        out.update(novelty_max_cos_mean=float(nov["max_cos"][present].mean()),
                   leakage_share=float((nov["max_cos"][present] > v["eer_threshold"]).mean()),
                   copy_share=float((nov["max_cos"][present] > nov["genuine_mean"][present]).mean()))
    return out
