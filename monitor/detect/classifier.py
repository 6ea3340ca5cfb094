"""Domain-classifier two-sample test: can a classifier tell current studies from reference ones?"""

from __future__ import annotations

import numpy as np
import torch

from monitor.detect._torch import (
    SidePermuter,
    as_embeddings,
    as_groups,
    check_alpha,
    check_groups_pairing,
    check_optional_components,
    check_positive_int,
    cluster_codes,
    fit_projection,
    require_fitted,
    require_samples,
    resolve_device,
)
from monitor.detect.result import DetectionResult, permutation_p_value
from monitor.errors import InsufficientDataError

RIDGE = 0.1  # ridge penalty per training study, on standardised features


class ClassifierDrift:
    """Out-of-fold AUC of a linear classifier separating current from reference studies.

    The classifier is a ridge least-squares linear discriminant (regularised Fisher LDA) on
    standardised features, fitted in each of ``n_folds`` folds on the other folds, so no study
    is scored by a model that saw it. The statistic is the AUC over (current, reference) pairs
    scored by the same fold's model: 0.5 when the samples look alike.

    The p-value is exact: for each of ``n_permutations`` random relabellings (within folds)
    the classifier is refitted in every fold and the AUC recomputed, and
    p = (1 + #{permuted AUC >= observed}) / (1 + B). Refitting matters: permuting labels on
    fixed out-of-fold scores ignores that the fold models were trained on each other's
    labels, and over-alarms (measured with a logistic regression scored that way: 0.08 on
    independent and 0.12 on repeat-study windows at nominal 0.05). A least-squares fit is
    linear in the labels (w = M y, M fixed per fold), so all B refits cost one matrix product
    per fold.

    With ``groups`` (patient keys for both samples) the folds keep a patient's studies
    together, so repeat studies do not leak between training and scoring, and the relabelling
    moves whole patients (``SidePermuter``), since a patient's studies are not independent
    evidence. PCA, when asked for, is fitted on the pooled sample without labels.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        n_folds: int = 5,
        seed: int = 0,
        pca_components: int | None = 32,
        device: str = "auto",
        n_permutations: int = 1000,
    ):
        self.alpha = alpha
        self.n_folds = n_folds
        self.seed = seed
        self.pca_components = pca_components
        self.device = device
        self.n_permutations = n_permutations

    def fit(self, reference: np.ndarray, *, groups: np.ndarray | None = None) -> ClassifierDrift:
        check_alpha(self.alpha)
        check_positive_int(self.n_folds, name="n_folds", minimum=2)
        check_positive_int(self.n_permutations, name="n_permutations")
        check_optional_components(self.pca_components)
        reference = as_embeddings(reference, name="reference")
        self.groups_ = as_groups(groups, name="groups", n=reference.shape[0])
        require_samples(reference.shape[0], minimum=2 * self.n_folds, name="reference")
        self.device_ = resolve_device(self.device)
        self.reference_ = reference
        self.n_features_in_ = reference.shape[1]
        return self

    def score(self, current: np.ndarray, *, groups: np.ndarray | None = None) -> float:
        """The out-of-fold AUC (no p-value)."""
        problem = self._problem(current, groups)
        observed = problem.labels[:, None].to(torch.float64)
        return float(problem.auc(observed.to(problem.device))[0])

    def test(self, current: np.ndarray, *, groups: np.ndarray | None = None) -> DetectionResult:
        problem = self._problem(current, groups)
        permuter = SidePermuter(
            problem.labels.numpy(), clusters=problem.clusters, strata=problem.folds
        )
        generator = torch.Generator().manual_seed(self.seed)
        aucs = (
            torch.cat(
                [
                    problem.auc(block.to(problem.device, torch.float64))
                    for block in permuter.chunks(self.n_permutations, generator=generator)
                ]
            )
            .cpu()
            .numpy()
        )
        observed, permuted = float(aucs[0]), aucs[1:]
        p_value = permutation_p_value(observed - 1e-12, permuted)
        n_cur = int(problem.labels.sum())
        n_ref = len(problem.labels) - n_cur
        details = {
            "auc": observed,
            "folds": int(self.n_folds),
            "fold_split": "stratified, by patient"
            if problem.clusters is not None
            else "stratified",
            "classifier": (
                f"ridge least-squares linear discriminant (penalty {RIDGE} per study) "
                "on standardised features"
            ),
            "null": "labels permuted within folds, classifier refitted in every fold",
            "n_permutations": int(self.n_permutations),
            "permuted_q95": float(np.quantile(permuted, 0.95)),
            "permutation_unit": permuter.unit,
            "n_groups": None if problem.clusters is None else int(np.unique(problem.clusters).size),
            "seed": int(self.seed),
            "pca_components": problem.pca_components,
            "explained_variance_ratio": problem.explained_variance_ratio,
            "device": str(self.device_),
        }
        return DetectionResult(
            detector="ClassifierDrift",
            feature="embedding",
            statistic=observed,
            p_value=p_value,
            threshold=float(self.alpha),
            drift=p_value < self.alpha,
            n_reference=n_ref,
            n_current=n_cur,
            details=details,
        )

    def _problem(self, current: np.ndarray, groups: np.ndarray | None) -> _FoldedProblem:
        require_fitted(self, "reference_")
        current = as_embeddings(current, name="current", n_features=self.n_features_in_)
        check_groups_pairing(self.groups_, groups)
        current_groups = as_groups(groups, name="groups", n=current.shape[0])
        require_samples(current.shape[0], minimum=2 * self.n_folds, name="current")
        n_ref = self.reference_.shape[0]
        labels = np.zeros(n_ref + current.shape[0], dtype=bool)
        labels[n_ref:] = True  # True = current
        clusters = (None if current_groups is None or self.groups_ is None  # both or neither
                    else cluster_codes(self.groups_, current_groups))
        folds = _folds(labels, clusters, n_folds=int(self.n_folds), seed=int(self.seed))
        pooled = torch.from_numpy(np.concatenate([self.reference_, current])).to(self.device_)
        projection = fit_projection(
            pooled, self.pca_components, generator=torch.Generator().manual_seed(int(self.seed))
        )
        features = projection.apply(pooled).double()
        return _FoldedProblem(
            features=features,
            labels=torch.from_numpy(labels),
            folds=folds,
            clusters=clusters,
            pca_components=projection.n_components,
            explained_variance_ratio=projection.explained_variance_ratio,
        )


class _FoldedProblem:
    """Pooled features split in folds, each fold's training side standardised and factorised
    once: the least-squares weights for labels y are gram⁻¹ trainᵀ (y - mean y)."""

    def __init__(
        self,
        *,
        features: torch.Tensor,
        labels: torch.Tensor,
        folds: np.ndarray,
        clusters: np.ndarray | None,
        pca_components: int | None,
        explained_variance_ratio: float,
    ):
        self.device = features.device
        self.labels = labels
        self.folds = folds
        self.clusters = clusters
        self.pca_components = pca_components
        self.explained_variance_ratio = explained_variance_ratio
        self._splits = []
        for fold in np.unique(folds):
            held_out = torch.from_numpy(folds == fold).to(self.device)
            train, test = features[~held_out], features[held_out]
            mean, std = train.mean(dim=0), train.std(dim=0).clamp(min=1e-12)
            train, test = (train - mean) / std, (test - mean) / std
            gram = train.T @ train
            gram.diagonal().add_(RIDGE * train.shape[0])
            self._splits.append((held_out, train, test, torch.linalg.cholesky(gram)))

    def auc(self, positive: torch.Tensor) -> torch.Tensor:
        """Pooled same-fold AUC for each 0/1 column of ``positive`` (N x b), the classifier
        refitted on that column's labels in every fold."""
        u = torch.zeros(positive.shape[1], dtype=torch.float64, device=self.device)
        pairs = torch.zeros_like(u)
        for held_out, train, test, cholesky in self._splits:
            train_labels = positive[~held_out]
            weights = torch.cholesky_solve(
                train.T @ (train_labels - train_labels.mean(dim=0)), cholesky
            )
            order = (test @ weights).argsort(dim=0)
            test_labels = positive[held_out]
            in_rank_order = torch.gather(test_labels, 0, order)
            ranks = torch.arange(1, test.shape[0] + 1, dtype=torch.float64, device=self.device)
            n_pos = test_labels.sum(dim=0)
            u += ranks @ in_rank_order - n_pos * (n_pos + 1) / 2
            pairs += n_pos * (test.shape[0] - n_pos)
        return u / pairs.clamp(min=1)


def _folds(
    labels: np.ndarray, clusters: np.ndarray | None, *, n_folds: int, seed: int
) -> np.ndarray:
    """Stratified folds, by patient when ``clusters`` are given.

    Patients are split in three kinds (reference only, current only, both) and each kind is
    dealt, largest patients first, to the fold holding fewest studies of that kind, so every
    fold gets a like share of both samples and a patient's studies never straddle folds.
    """
    rng = np.random.default_rng(seed)
    if clusters is None:
        folds = np.empty(len(labels), dtype=np.int64)
        for value in (False, True):
            members = rng.permutation(np.flatnonzero(labels == value))
            folds[members] = np.arange(members.size) % n_folds
    else:
        _, cluster = np.unique(clusters, return_inverse=True)
        size = np.bincount(cluster)
        current = np.bincount(cluster, weights=labels)
        kind = np.where(current == 0, 0, np.where(current == size, 1, 2))
        if size.size < n_folds:
            raise InsufficientDataError(f"{size.size} patients cannot fill {n_folds} folds")
        fold_of_cluster = np.empty(size.size, dtype=np.int64)
        load = np.zeros((3, n_folds))
        order = rng.permutation(size.size)
        order = order[np.argsort(-size[order], kind="stable")]
        for c in order:
            fold = int(np.argmin(load[kind[c]]))
            fold_of_cluster[c] = fold
            load[kind[c], fold] += size[c]
        folds = fold_of_cluster[cluster]
    for fold in range(n_folds):
        in_fold = labels[folds == fold]
        if in_fold.all() or not in_fold.any():
            raise InsufficientDataError(
                f"cross-validation fold {fold} holds studies of one sample only; "
                "use fewer folds or more studies (patients)"
            )
    return folds
