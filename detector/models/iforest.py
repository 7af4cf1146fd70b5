"""Isolation Forest over joint per-GPU features, with explanations and a calibrated score; also the
forest of the log side's SequenceModel (windows of template counts), through fit(X)/score_samples(X).

Written in numpy rather than wrapping scikit-learn's IsolationForest for two reasons: the model
store wants state as plain arrays (a forest here is five (trees, nodes) arrays), and explanations
need the isolation paths.  The algorithm is Liu, Ting & Zhou (2008): random axis-parallel splits
on subsamples of ``max_samples`` points, depth limit log2(max_samples), anomaly score
2^(-E[h(x)] / c(max_samples)).

Calibration: ``score = max(0, s - median_train) / (sensitivity * (q_train - median_train))`` with
``q_train`` the ``calibration_quantile`` of the training scores, so > 1 means "more isolated than
all but (1 - quantile) of the training data, by a margin of ``sensitivity``".

Explanation (in the spirit of DIFFI, Carletti et al. 2020): every split on a point's path credits
its feature with the bits of the node it cut away from the point, log2(node size / child size) —
the split that isolates an outlier in one go earns log2(256) = 8, a split that halves a crowd 1.
Dividing by the average credit the feature gets on training data removes "this feature is simply
split on often", and the ratios are normalised to sum to 1.
"""
from __future__ import annotations

import numpy as np

from .base import BaseModel, ScoreFrame, as_float_array

EULER = 0.5772156649


def c_factor(n) -> np.ndarray:
    """Average path length of an unsuccessful BST search among n points."""
    n = np.asarray(n, float)
    out = np.zeros_like(n)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + EULER) - 2.0 * (n[big] - 1.0) / n[big]
    out[n == 2] = 1.0
    return out


class IsolationForestModel(BaseModel):
    """Multivariate: fit(t, X, y=None) / score(t, X, y=None) -> ScoreFrame (no band: NaN)."""

    kind = "iforest"
    multivariate = True
    takes_features = True
    version = 1
    _state_attrs = ("feature_", "threshold_", "left_", "right_", "size_", "depth_", "psi_",
                    "fill_", "median_", "quantile_", "baseline_", "n_features_")

    def __init__(self, feature_names=None, n_estimators: int = 100, max_samples: int = 256,
                 sensitivity: float = 1.0, calibration_quantile: float = 0.995, random_state: int = 0,
                 direction: str = "both", min_deviation: float = 0.0):
        self.feature_names = feature_names
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.sensitivity = sensitivity
        self.calibration_quantile = calibration_quantile
        self.random_state = random_state
        self.direction = direction  # kept for config uniformity; isolation has no direction
        self.min_deviation = min_deviation

    def _check_params(self):
        self._check_common()
        if int(self.n_estimators) < 1:
            raise ValueError(f"iforest: n_estimators must be >= 1, got {self.n_estimators!r}")
        if int(self.max_samples) < 4:
            raise ValueError(f"iforest: max_samples must be >= 4, got {self.max_samples!r}")
        if not 0.5 < self.calibration_quantile < 1:
            raise ValueError(f"iforest: calibration_quantile must be in (0.5, 1), "
                             f"got {self.calibration_quantile!r}")

    def min_history(self, step_seconds: float = 60.0) -> int:
        return int(self.max_samples)

    def _X(self, X) -> np.ndarray:
        if hasattr(X, "columns") and self.feature_names is not None:
            missing = [c for c in self.feature_names if c not in X.columns]
            if missing:
                raise ValueError(f"iforest: X lacks column(s) {missing}")
            X = X[list(self.feature_names)].to_numpy(float)
        X = as_float_array(X, "X", ndim=2)
        if self.feature_names is not None and X.shape[1] != len(self.feature_names):
            raise ValueError(f"iforest: X has {X.shape[1]} columns, feature_names has "
                             f"{len(self.feature_names)}")
        if hasattr(self, "n_features_") and X.shape[1] != self.n_features_:
            raise ValueError(f"iforest: X has {X.shape[1]} columns, the model was fitted on "
                             f"{self.n_features_}")
        if hasattr(self, "fill_"):
            nan = np.isnan(X)
            if nan.any():
                X = np.where(nan, self.fill_[None, :], X)
        return X

    # -- fit ------------------------------------------------------------------------------------
    def _build_tree(self, Xs, rng, max_depth, max_nodes):
        feat = np.full(max_nodes, -1, np.int32)
        thr = np.zeros(max_nodes)
        left = np.full(max_nodes, -1, np.int32)
        right = np.full(max_nodes, -1, np.int32)
        size = np.zeros(max_nodes, np.int32)
        depth = np.zeros(max_nodes, np.int32)
        stack = [(0, np.arange(len(Xs)), 0)]
        nxt = 1
        while stack:
            node, rows, d = stack.pop()
            size[node], depth[node] = len(rows), d
            if d >= max_depth or len(rows) <= 1:
                continue
            sub = Xs[rows]
            lo, hi = sub.min(axis=0), sub.max(axis=0)
            cand = np.nonzero(hi > lo)[0]
            if len(cand) == 0:
                continue
            f = int(rng.choice(cand))
            split = rng.uniform(lo[f], hi[f])
            go_left = sub[:, f] < split
            feat[node], thr[node] = f, split
            left[node], right[node] = nxt, nxt + 1
            stack.append((nxt, rows[go_left], d + 1))
            stack.append((nxt + 1, rows[~go_left], d + 1))
            nxt += 2
        return feat, thr, left, right, size, depth

    def fit(self, t, X=None, y=None):
        """fit(t, X) like the other models, or fit(X) sklearn-style."""
        self._check_params()
        if X is None:
            X = t
        for a in ("fill_", "n_features_"):
            if hasattr(self, a):
                delattr(self, a)
        X = self._X(X)
        n = len(X)
        if n < 8:
            raise ValueError(f"iforest: need at least 8 rows to fit, got {n}")
        fill = np.nanmedian(X, axis=0)
        fill = np.where(np.isnan(fill), 0.0, fill)
        X = np.where(np.isnan(X), fill[None, :], X)
        rng = np.random.default_rng(self.random_state)
        psi = min(int(self.max_samples), n)
        max_depth = int(np.ceil(np.log2(psi)))
        max_nodes = 2 ** (max_depth + 1) - 1
        T = int(self.n_estimators)
        arrays = [np.empty((T, max_nodes), dt) for dt in (np.int32, float, np.int32, np.int32,
                                                          np.int32, np.int32)]
        for k in range(T):
            rows = rng.choice(n, psi, replace=False)
            for arr, part in zip(arrays, self._build_tree(X[rows], rng, max_depth, max_nodes),
                                 strict=True):
                arr[k] = part
        (self.feature_, self.threshold_, self.left_, self.right_, self.size_, self.depth_) = arrays
        self.psi_ = psi
        self.fill_ = fill
        self.n_features_ = int(X.shape[1])
        raw, credit = self._paths(X)
        self.median_ = float(np.median(raw))
        self.quantile_ = float(max(np.quantile(raw, self.calibration_quantile), self.median_ + 1e-6))
        base = credit.mean(axis=0)
        self.baseline_ = np.where(base > 0, base, base[base > 0].min() if (base > 0).any() else 1.0)
        return self

    def fit_metrics(self) -> dict:
        self._require_fitted()
        return {"raw_median": self.median_, "raw_quantile": self.quantile_, "max_samples": self.psi_}

    # -- score ----------------------------------------------------------------------------------
    def _paths(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (raw isolation score 2^(-E[h]/c) per row, per-feature path credit per row)."""
        T, n = self.feature_.shape[0], len(X)
        tree = np.arange(T)[:, None]
        rows = np.arange(n)
        cur = np.zeros((T, n), np.int64)
        credit = np.zeros((n, self.n_features_))
        while True:
            f = self.feature_[tree, cur]
            internal = f >= 0
            if not internal.any():
                break
            fx = X[rows[None, :], np.where(internal, f, 0)]
            go_left = fx < self.threshold_[tree, cur]
            nxt = np.where(internal, np.where(go_left, self.left_[tree, cur], self.right_[tree, cur]), cur)
            # how much of the node this split cut away from the point, in bits
            gain = np.log2(self.size_[tree, cur] / np.maximum(self.size_[tree, nxt], 1))
            ti, pi = np.nonzero(internal)
            np.add.at(credit, (pi, f[ti, pi]), gain[ti, pi])
            cur = nxt
        h = self.depth_[tree, cur] + c_factor(self.size_[tree, cur])
        raw = 2.0 ** (-h.mean(axis=0) / c_factor(np.array([self.psi_]))[0])
        return raw, credit / T

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        return np.maximum(raw - self.median_, 0.0) / (self.sensitivity * (self.quantile_ - self.median_))

    def score(self, t, X=None, y=None) -> ScoreFrame:
        self._require_fitted()
        if X is None:
            X = t
        X = self._X(X)
        s = self._calibrate(self._paths(X)[0])
        nan = np.full(len(s), np.nan)
        return ScoreFrame(score=s, expected=nan.copy(), lower=nan.copy(), upper=nan.copy())

    def score_samples(self, X) -> np.ndarray:
        self._require_fitted()
        return -self._paths(self._X(X))[0]

    def explain(self, X, top: int | None = None) -> list[dict]:
        """Per row: {feature name: share of the anomaly attributed to it}, largest first."""
        self._require_fitted()
        X = self._X(X)
        _, credit = self._paths(X)
        ratio = credit / self.baseline_[None, :]
        ratio /= np.maximum(ratio.sum(axis=1, keepdims=True), 1e-12)
        names = (list(self.feature_names) if self.feature_names is not None
                 else [f"x{i}" for i in range(self.n_features_)])
        out = []
        for row in ratio:
            order = np.argsort(-row)[: top or len(row)]
            out.append({names[i]: float(row[i]) for i in order})
        return out

    # -- what the metric detector asks of a model kind ----------------------------------------
    @classmethod
    def input_names(cls, features: list[str]) -> list[str]:
        # the watched value itself is a column beside the features (the thermal model, by
        # contrast, explains the value *from* the features)
        return ["value", *features]

    @classmethod
    def design_matrix(cls, y: np.ndarray, X: np.ndarray | None) -> np.ndarray:
        return np.column_stack([y, X]) if X is not None else np.asarray(y, float)[:, None]

    def explain_batch(self, X: np.ndarray | None, score: np.ndarray) -> list[str] | None:
        """The features that drove the strongest point of the batch, largest share first."""
        s = np.nan_to_num(score)
        if X is None or not (s > 1).any():
            return None
        try:
            (shares,) = self.explain(X[[int(np.argmax(s))]])
        except (ValueError, IndexError):
            return None
        return [f"{name} {share:.0%}" for name, share in list(shares.items())[:3]]
