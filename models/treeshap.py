"""Exact path-dependent TreeSHAP for a fitted binary `HistGradientBoostingClassifier`, vectorised over rows.

Why our own: the `shap` package pulls numba and does not read the native categorical splits of
`HistGradientBoostingClassifier`; the service needs one row in about a millisecond and the batch job millions of
rows, with results that do not depend on how rows are batched.

Method (Lundberg et al. 2020, "path-dependent" TreeSHAP, in the lookup form of Yang 2021, "Fast TreeSHAP" v2):
for a leaf with value `v` whose path tests the distinct features `D` (`d = |D|`), let `z_j` be the share of
training rows that follow the path's branches on feature `j` (product of child/parent counts) and `o_j(x)` 1
when `x` follows all of them. The leaf adds to feature `i`'s SHAP value

    v * (o_i - z_i) * sum_{S ⊆ D \\ {i}} |S|! (d - |S| - 1)! / d! * prod_{j in S} o_j * prod_{j in D \\ S \\ {i}} z_j

which depends on `x` only through the bit pattern `o(x)`. So every leaf gets a table of `2^d x d` values at
construction, and explaining rows is: evaluate every split once, collect each leaf's bit pattern, look the
patterns up and add per feature. The leaf a row reaches is the one whose pattern has every bit set, so the same
pass also gives the raw score, summed in the booster's own order (baseline, then tree by tree): it equals
`booster.decision_function` bit for bit. Every per-row sum runs in a fixed sequential order that does not depend
on how many rows are processed together, so one row and a million rows give bit-identical values.

Guarantees (tested): raw scores equal `decision_function` exactly; `expected_value + shap_values.sum(axis=1)`
equals them up to rounding; the values equal brute-force Shapley values of the path-dependent expectation.

This reads fitted internals (`_predictors`, `_baseline_prediction`, `_bin_mapper`, `_preprocess_X`), as `shap`
does; the tests pin the behaviour so a scikit-learn upgrade that changes them fails loudly.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingClassifier

# Tables hold 2^d x d values per leaf; the training config caps max_depth (<= 12) so d stays small.
MAX_PATH_FEATURES = 16
_CHUNK_ELEMENTS = 4_000_000  # rows x (conditions or slots) per chunk: ~32 MB per float64 intermediate


def _shapley_weights(d: int) -> np.ndarray:
    """w(s) = s! (d - s - 1)! / d! for s = 0 .. d-1."""
    return np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)])


def _leaf_tables(values: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Contribution tables for leaves that test the same number `d` of distinct features.

    Args:
        values: leaf values, shape (L,).
        zero: cover fractions z, shape (L, d).
    Returns:
        Shape (L, 2^d, d): entry [l, p, k] is what leaf l adds to its k-th feature for a row with bit pattern p
        (bit k of p is o_k).
    """
    n_leaves, d = zero.shape
    patterns = 1 << d
    bits = ((np.arange(patterns)[:, None] >> np.arange(d)[None, :]) & 1).astype(np.float64)  # (P, d)
    weights = _shapley_weights(d)
    out = np.empty((n_leaves, patterns, d))
    for k in range(d):
        # Coefficients of prod_{j != k} (z_j + o_j t): coefficient s sums over subsets S of size s.
        poly = np.zeros((n_leaves, patterns, d))
        poly[..., 0] = 1.0
        for j in range(d):
            if j == k:
                continue
            shifted = np.zeros_like(poly)
            shifted[..., 1:] = poly[..., :-1] * bits[None, :, j, None]
            poly = poly * zero[:, None, j, None] + shifted
        weighted = poly @ weights  # (L, P)
        out[:, :, k] = values[:, None] * (bits[None, :, k] - zero[:, k, None]) * weighted
    return out


def leaf_conditions_flat(leaf_conditions: list) -> list[list]:
    """Each leaf's conditions as one list (all features)."""
    return [[c for per_feature in conditions for c in per_feature] for conditions in leaf_conditions]


class BoostedTreeExplainer:
    """Raw scores and path-dependent TreeSHAP values (raw log-odds) for a fitted binary
    `HistGradientBoostingClassifier`.

    Attributes:
        expected_value: the model's mean raw score over its training cover (baseline + tree expectations).
        n_features: number of input columns the booster was fitted on.
    """

    def __init__(self, booster: HistGradientBoostingClassifier) -> None:
        if getattr(booster, "n_trees_per_iteration_", None) != 1:
            raise ValueError(
                "BoostedTreeExplainer supports fitted binary HistGradientBoostingClassifier only"
            )
        self.n_features = int(booster.n_features_in_)
        self._booster = booster
        # sklearn >= 1.6 ordinal-encodes categorical columns itself and moves them first: the trees index the
        # remapped columns, so values are computed there and put back in input order.
        mask = getattr(booster, "is_categorical_", None)
        if getattr(booster, "_preprocessor", None) is not None and mask is not None:
            self._input_column = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
        else:
            self._input_column = np.arange(self.n_features)
        known_bitsets, f_idx_map = booster._bin_mapper.make_known_categories_bitsets()
        self._known_bitsets = np.asarray(known_bitsets, dtype=np.int64)
        self._f_idx_map = np.asarray(f_idx_map, dtype=np.int64)
        self._build(booster)

    # --- construction --------------------------------------------------------------------------------------

    def _build(self, booster: HistGradientBoostingClassifier) -> None:
        node_feature, node_threshold, node_missing_left, node_categorical, node_bitsets = [], [], [], [], []
        leaf_values, leaf_features, leaf_zero, leaf_conditions, leaf_tree = [], [], [], [], []
        self._baseline = float(np.asarray(booster._baseline_prediction).ravel()[0])
        expected = self._baseline
        constant_tree_value: dict[int, float] = {}
        n_trees = 0
        for tree, iteration in enumerate(booster._predictors):
            n_trees += 1
            predictor = iteration[0]
            nodes = predictor.nodes
            raw_bitsets = np.asarray(predictor.raw_left_cat_bitsets, dtype=np.int64)
            first_global = len(node_feature)
            for node in nodes:  # every node gets a global id; leaves' entries are never evaluated
                leaf = bool(node["is_leaf"])
                node_feature.append(0 if leaf else int(node["feature_idx"]))
                node_threshold.append(float(node["num_threshold"]))
                node_missing_left.append(bool(node["missing_go_to_left"]))
                categorical = bool(node["is_categorical"]) and not leaf
                node_categorical.append(categorical)
                node_bitsets.append(
                    raw_bitsets[int(node["bitset_idx"])] if categorical else np.zeros(8, np.int64)
                )
            if nodes[0]["is_leaf"]:
                constant_tree_value[tree] = float(nodes[0]["value"])
                expected += float(nodes[0]["value"])
                continue
            # Depth-first walk, left before right: (node index, [(global node id, went left, feature, fraction)]).
            stack: list[tuple[int, list[tuple[int, bool, int, float]]]] = [(0, [])]
            while stack:
                index, path = stack.pop()
                node = nodes[index]
                if node["is_leaf"]:
                    features: list[int] = []
                    zero: dict[int, float] = {}
                    for _, _, feature, fraction in path:
                        if feature not in zero:
                            features.append(feature)
                            zero[feature] = 1.0
                        zero[feature] *= fraction
                    if len(features) > MAX_PATH_FEATURES:
                        raise ValueError(
                            f"a tree path tests {len(features)} distinct features (limit {MAX_PATH_FEATURES}); "
                            "lower max_depth or max_leaf_nodes"
                        )
                    value = float(node["value"])
                    expected += value * math.prod(zero.values())
                    leaf_values.append(value)
                    leaf_features.append(features)
                    leaf_zero.append([zero[f] for f in features])
                    leaf_conditions.append(
                        [[(g, left) for g, left, f, _ in path if f == feat] for feat in features]
                    )
                    leaf_tree.append(tree)
                    continue
                parent = float(node["count"])
                feature = int(node["feature_idx"])
                for child, went_left in ((int(node["right"]), False), (int(node["left"]), True)):
                    fraction = float(nodes[child]["count"]) / parent
                    stack.append((child, [*path, (first_global + index, went_left, feature, fraction)]))
        self.expected_value = expected
        self.n_trees = n_trees

        self._node_feature = np.asarray(node_feature, dtype=np.int64)
        self._node_threshold = np.asarray(node_threshold, dtype=np.float64)
        self._node_missing_left = np.asarray(node_missing_left, dtype=bool)
        self._cat_nodes = np.flatnonzero(np.asarray(node_categorical, dtype=bool))
        self._cat_bitsets = np.asarray(node_bitsets, dtype=np.int64).reshape(-1, 8)[self._cat_nodes]
        self._cat_known_row = self._f_idx_map[self._node_feature[self._cat_nodes]]

        # Only split nodes some path tests are evaluated; map global ids to columns of the decision matrix.
        used = sorted(
            {g for conditions in leaf_conditions for per_feature in conditions for g, _ in per_feature}
        )
        self._used_nodes = np.asarray(used, dtype=np.int64)
        column_of = {g: c for c, g in enumerate(used)}
        is_cat = np.isin(self._used_nodes, self._cat_nodes)
        self._used_cat_columns = np.flatnonzero(is_cat)
        self._used_cat_positions = np.searchsorted(self._cat_nodes, self._used_nodes[is_cat])

        # Tables, grouped by path length for vectorised construction.
        by_length: dict[int, list[int]] = {}
        for leaf, features in enumerate(leaf_features):
            by_length.setdefault(len(features), []).append(leaf)
        leaf_table: list[np.ndarray] = [np.empty(0)] * len(leaf_features)
        for leaves in by_length.values():
            block = _leaf_tables(
                np.asarray([leaf_values[i] for i in leaves]), np.asarray([leaf_zero[i] for i in leaves])
            )
            for position, leaf in enumerate(leaves):
                leaf_table[leaf] = block[position].ravel()

        # Conditions grouped by leaf: the bit of the leaf's feature each one tests.
        cond_column, cond_left, cond_bit, leaf_cond_start, table_base = [], [], [], [], []
        slot_leaf, slot_k, slot_d, slot_feature = [], [], [], []
        offset = 0
        for leaf, features in enumerate(leaf_features):
            leaf_cond_start.append(len(cond_column))
            table_base.append(offset)
            offset += leaf_table[leaf].size
            for k, feature in enumerate(features):
                for g, left in leaf_conditions[leaf][k]:
                    cond_column.append(column_of[g])
                    cond_left.append(left)
                    cond_bit.append(1 << k)
                slot_leaf.append(leaf)
                slot_k.append(k)
                slot_d.append(len(features))
                slot_feature.append(feature)
        self._table = np.concatenate(leaf_table) if leaf_table else np.zeros(0)
        if self._table.size >= 2**31:
            raise ValueError("TreeSHAP tables too large: lower max_depth or max_leaf_nodes")
        # Conditions laid out leaf x position (padded with a condition that always holds), so each leaf's
        # pattern is a few elementwise ORs over all leaves at once instead of a segmented reduction.
        depth = max((len(c) for c in leaf_conditions_flat(leaf_conditions)), default=0)
        always = len(self._used_nodes)  # an extra decision column that is always True
        self._pad_node = np.full((len(leaf_features), depth), always, dtype=np.int64)
        self._pad_left = np.ones((len(leaf_features), depth), dtype=bool)
        self._pad_bit = np.zeros((len(leaf_features), depth), dtype=np.uint16)
        for leaf in range(len(leaf_features)):
            start = leaf_cond_start[leaf]
            stop = leaf_cond_start[leaf + 1] if leaf + 1 < len(leaf_features) else len(cond_column)
            self._pad_node[leaf, : stop - start] = cond_column[start:stop]
            self._pad_left[leaf, : stop - start] = cond_left[start:stop]
            self._pad_bit[leaf, : stop - start] = cond_bit[start:stop]
        self.n_conditions = len(cond_column)
        self._leaf_full = np.asarray([(1 << len(f)) - 1 for f in leaf_features], dtype=np.uint16)
        self._leaf_value = np.asarray(leaf_values, dtype=np.float64)
        leaf_tree_arr = np.asarray(leaf_tree, dtype=np.int64)
        self._split_trees, self._tree_leaf_start = np.unique(leaf_tree_arr, return_index=True)
        self._constant_trees = np.asarray(sorted(constant_tree_value), dtype=np.int64)
        self._constant_values = np.asarray([constant_tree_value[t] for t in self._constant_trees])

        # Slots (leaf, feature) in leaf order; a sparse 0/1 matrix (features x slots) adds each feature's terms.
        # scipy's CSR x dense product runs, for every output value, over the row's stored entries in order
        # (y += 1.0 * x): a fixed sequential sum per data row whatever the number of rows (tested).
        slot_feature_arr = np.asarray(slot_feature, dtype=np.int64)
        self._slot_leaf = np.asarray(slot_leaf, dtype=np.int64)
        self._slot_base = (
            np.asarray(table_base, dtype=np.int64)[self._slot_leaf] + np.asarray(slot_k, dtype=np.int64)
        ).astype(np.int32)
        self._leaf_d = np.asarray([len(f) for f in leaf_features], dtype=np.int32)
        self._present_features, feature_row = np.unique(slot_feature_arr, return_inverse=True)
        self._sum_by_feature = sparse.csr_matrix(
            (np.ones(len(slot_leaf)), (feature_row, np.arange(len(slot_leaf)))),
            shape=(len(self._present_features), len(slot_leaf)),
        )
        self._sum_by_feature.sort_indices()
        self.n_slots = len(slot_leaf)
        self.n_leaves = len(leaf_features)

    # --- evaluation ----------------------------------------------------------------------------------------

    # Intermediates are node- or leaf-major (rows of the matrix = nodes or leaves, columns = data rows): the
    # gathers below then copy whole contiguous rows. Sums over a row's terms always run in a fixed order.

    def _goes_left(self, X: np.ndarray) -> np.ndarray:
        """Per used split node and row: does the row go to the left child? Mirrors sklearn's predictor.

        Returns shape (n_used_nodes + 1, n_rows); the extra last row is all True (a condition that always holds).
        """
        nodes = self._used_nodes
        values = np.ascontiguousarray(X.T)[self._node_feature[nodes]]  # (nodes, rows)
        missing_left = self._node_missing_left[nodes][:, None]
        with np.errstate(invalid="ignore"):
            left = values <= self._node_threshold[nodes][:, None]
        if len(self._used_cat_columns):
            columns, positions = self._used_cat_columns, self._used_cat_positions
            raw = values[columns]
            invalid = np.isnan(raw) | (raw < 0)
            code = np.where(invalid, 0, raw).astype(np.int64) & 0xFF  # sklearn casts to uint8
            word, bit = code >> 5, code & 31
            in_left = (self._cat_bitsets[positions[:, None], word] >> bit) & 1
            known = (self._known_bitsets[self._cat_known_row[positions][:, None], word] >> bit) & 1
            cat_missing_left = missing_left[columns]
            decided = np.where(in_left == 1, True, np.where(known == 1, False, cat_missing_left))
            left[columns] = np.where(invalid, cat_missing_left, decided)
        out = np.ones((len(nodes) + 1, X.shape[0]), dtype=bool)
        out[:-1] = np.where(np.isnan(values), missing_left, left)
        return out

    def _patterns(self, X: np.ndarray) -> np.ndarray:
        """Per leaf and row: bit k set when the row follows the leaf's path on the leaf's k-th feature."""
        left = self._goes_left(X)
        missing = np.zeros((len(self._leaf_full), X.shape[0]), dtype=np.uint16)
        for j in range(self._pad_node.shape[1]):
            failed = left[self._pad_node[:, j]] != self._pad_left[:, j, None]
            missing |= failed * self._pad_bit[:, j, None]
        return self._leaf_full[:, None] ^ missing

    def _raw(self, patterns: np.ndarray) -> np.ndarray:
        """Baseline + each tree's reached leaf value, added in tree order like sklearn's `_raw_predict`."""
        per_tree = np.empty((self.n_trees + 1, patterns.shape[1]))
        per_tree[0] = self._baseline
        if self.n_leaves:
            # Exactly one leaf per tree is reached; the others add exact zeros, so any order gives its value.
            reached = np.where(patterns == self._leaf_full[:, None], self._leaf_value[:, None], 0.0)
            per_tree[1 + self._split_trees] = np.add.reduceat(reached, self._tree_leaf_start, axis=0)
        per_tree[1 + self._constant_trees] = self._constant_values[:, None]
        return np.add.accumulate(per_tree, axis=0)[-1]  # accumulate is sequential: ((b + t1) + t2) + ...

    def _shap(self, patterns: np.ndarray) -> np.ndarray:
        n = patterns.shape[1]
        out = np.zeros((n, self.n_features))
        if self.n_slots == 0:
            return out
        scaled = patterns.astype(np.int32) * self._leaf_d[:, None]  # offset of each leaf's pattern row
        terms = self._table[self._slot_base[:, None] + scaled[self._slot_leaf]]  # (slots, rows)
        remapped = np.zeros_like(out)
        remapped[:, self._present_features] = (self._sum_by_feature @ terms).T
        out[:, self._input_column] = remapped
        return out

    def trees_input(self, X: np.ndarray) -> np.ndarray:
        """What the trees index: the booster's own preprocessing of `X` (category re-coding, column order)."""
        if X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} columns, got {X.shape[1]}")
        return np.ascontiguousarray(self._booster._preprocess_X(X, reset=False), dtype=np.float64)

    def _chunks(self, trees_input: np.ndarray) -> list[np.ndarray]:
        rows = max(1, _CHUNK_ELEMENTS // max(1, self.n_slots, self.n_conditions))
        return [trees_input[start : start + rows] for start in range(0, trees_input.shape[0], rows)] or [
            trees_input
        ]

    def explain(self, X: np.ndarray, preprocessed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores (identical to `booster.decision_function(X)`) and SHAP values in raw log-odds.

        Args:
            X: what the booster's `predict` takes (after any pipeline steps before it), shape (n_rows, n_features);
                or, with `preprocessed=True`, what `trees_input(X)` returns.
        Returns:
            (raw, shap): shapes (n_rows,) and (n_rows, n_features), SHAP columns in the order of the booster's
            input columns; each row of `shap` sums to `raw - expected_value` up to rounding.
        """
        trees_input = np.ascontiguousarray(X, dtype=np.float64) if preprocessed else self.trees_input(X)
        raws, shaps = [], []
        for chunk in self._chunks(trees_input):
            patterns = self._patterns(chunk)
            raws.append(self._raw(patterns))
            shaps.append(self._shap(patterns))
        return np.concatenate(raws), np.concatenate(shaps)

    def decision_function(self, X: np.ndarray, preprocessed: bool = False) -> np.ndarray:
        """Raw scores only, identical to `booster.decision_function(X)`."""
        trees_input = np.ascontiguousarray(X, dtype=np.float64) if preprocessed else self.trees_input(X)
        return np.concatenate([self._raw(self._patterns(chunk)) for chunk in self._chunks(trees_input)])

    def shap_values(self, X: np.ndarray) -> np.ndarray:
        """SHAP values in raw log-odds, shape (n_rows, n_features); row sums + `expected_value` = raw score."""
        return self.explain(X)[1]
