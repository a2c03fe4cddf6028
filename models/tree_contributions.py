"""LightGBM's TreeSHAP contributions for models of small trees, looked up instead of recomputed per row.

`pred_contrib` (path-dependent TreeSHAP) reads a row only through the branch it takes at each split of a tree:
a tree with k splits has at most 2^k different contribution vectors, one per pattern of branches. For the small
trees churnsense trains (4 leaves: 3 splits, at most 8 patterns), `ContributionTables` asks LightGBM once, when
the model loads, for every pattern's contributions (one synthetic row per pattern, tree by tree with
`start_iteration`), and scoring then only finds each row's pattern and adds up the table rows: ~20x cheaper than
`pred_contrib` on a million rows (measured in `benchmarks/batch.py`), and the values are LightGBM's own.

The same patterns give the raw score: each pattern's leaf value, added tree by tree from 0.0 as LightGBM's
`GBDT::PredictRaw` adds them, is LightGBM's `raw_score` bit for bit (checked at load), so scoring asks LightGBM
for nothing.

One truth: every row's contributions come from the same tables, summed tree by tree in tree order
(`np.bincount`, one sequential sum per row and column) whatever the number of rows, so a customer scored alone,
in a batch or on Spark gets the same bits. The sums agree with `pred_contrib` to rounding (~1e-15; tested).

Which branch a row takes follows LightGBM's `Tree::NumericalDecision` / `CategoricalDecision`. At load, every
synthetic row is traversed by LightGBM itself (`pred_leaf`) and must land on the leaf its pattern implies; a
model whose trees are too large or that fails that check gets `None` from `build`, and its caller uses
`pred_contrib` unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Largest number of splits per tree the tables are built for (2^6 = 64 patterns per tree).
MAX_SPLITS = 6
# LightGBM's kZeroThreshold (the float 1e-35f as a double): values this close to 0 are read as 0 (its dense
# input keeps only |v| > it).
_ZERO = float(np.float32(1e-35))
# Up to this many rows, one vectorised pass over every split at once; more rows go tree by tree in chunks of
# `_CHUNK_ROWS` (the working memory: trees x chunk patterns).
_FEW_ROWS = 256
# Synthetic rows the whole model is checked on at load (~0.1 s for 290 trees of 4 leaves).
_CHECK_ROWS = 1024
_CHUNK_ROWS = 16384
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}


@dataclass(frozen=True)
class _Split:
    feature: int
    numerical: bool
    threshold: float  # numerical splits
    categories: frozenset[int]  # categorical splits: the categories that go left
    missing: int  # _MISSING
    default_left: bool


def _goes_left(split: _Split, value: float) -> bool:
    """LightGBM's decision for one value (the scalar reference of `_decisions`)."""
    if abs(value) <= _ZERO:
        value = 0.0
    if not split.numerical:
        if math.isnan(value) or value < 0 or value >= 2**31:
            return False
        return int(value) in split.categories
    if math.isnan(value) and split.missing != _MISSING["NaN"]:
        value = 0.0
    if (split.missing == _MISSING["Zero"] and value == 0.0) or (
        split.missing == _MISSING["NaN"] and math.isnan(value)
    ):
        return split.default_left
    return value <= split.threshold


def _split(node: dict) -> _Split:
    """A split node of `Booster.dump_model()` (categorical thresholds read "1||4||7": the codes going left)."""
    numerical = node["decision_type"] == "<="
    return _Split(
        feature=int(node["split_feature"]),
        numerical=numerical,
        threshold=float(node["threshold"]) if numerical else math.nan,
        categories=frozenset()
        if numerical
        else frozenset(int(c) for c in str(node["threshold"]).split("||")),
        missing=_MISSING[str(node["missing_type"])],
        default_left=bool(node["default_left"]),
    )


def _candidates(splits: list[_Split]) -> list[float]:
    """Values of one feature that between them take every combination of branches its splits allow: NaN, 0,
    each threshold, its neighbours and values far on either side, each category and a code no split lists."""
    values = [math.nan, 0.0, -2 * _ZERO, 2 * _ZERO]
    for split in splits:
        if split.numerical:
            t = split.threshold
            far = max(1.0, 2 * abs(t))
            values += [t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf), t - far, t + far]
        else:
            values += [float(c) for c in sorted(split.categories)] + [-1.0]
    return values


class _Tree:
    """One tree's splits (in depth-first order) and how each pattern of branches ends at a leaf."""

    def __init__(self, root: dict) -> None:
        self._root = root
        self._nodes: list[dict] = []  # the split nodes, depth first: split i is `_nodes[i]`
        stack = [root]
        while stack:
            node = stack.pop()
            if "split_index" in node:
                self._nodes.append(node)
                stack += [node["right_child"], node["left_child"]]
        self._index = {id(node): i for i, node in enumerate(self._nodes)}
        self.splits = [_split(node) for node in self._nodes]

    def leaf(self, pattern: int) -> int:
        """The leaf a row with this pattern (bit i: split i goes left) reaches."""
        node = self._root
        while "split_index" in node:
            left = (pattern >> self._index[id(node)]) & 1
            node = node["left_child"] if left else node["right_child"]
        return int(node.get("leaf_index", 0))

    def synthetic_row(self, pattern: int, width: int) -> np.ndarray | None:
        """A row that takes this pattern's branches, or None when no row can (a feature split twice)."""
        row = np.zeros(width)
        by_feature: dict[int, list[int]] = {}
        for i, split in enumerate(self.splits):
            by_feature.setdefault(split.feature, []).append(i)
        for feature, indices in by_feature.items():
            splits = [self.splits[i] for i in indices]
            wanted = [bool((pattern >> i) & 1) for i in indices]
            for value in _candidates(splits):
                if [_goes_left(s, value) for s in splits] == wanted:
                    row[feature] = value
                    break
            else:
                return None
        return row


class ContributionTables:
    """Per-tree contribution tables of a LightGBM binary booster; `contributions(X)` = `pred_contrib(X)[:, :-1]`
    up to rounding. Build with `ContributionTables.build(booster)` (None when the trees do not suit)."""

    def __init__(self, booster: object, trees: list[_Tree], width: int) -> None:
        n_trees = len(trees)
        splits = max(1, max(len(t.splits) for t in trees))
        self.width = width
        self._patterns = 2**splits
        # Every split as three constants (trees padded to `splits` splits; a padding split never goes left):
        # a value goes left when value <= threshold (False for NaN and for categorical splits), NaN goes left
        # when `nan_left`, and 0 goes the other way than its comparison says when `zero_flip` (LightGBM's
        # missing types None / Zero / NaN reduce to these).
        self._feature = np.zeros((n_trees, splits), dtype=np.int64)
        self._threshold = np.full((n_trees, splits), np.nan)
        self._nan_left = np.zeros((n_trees, splits), dtype=bool)
        self._zero_flip = np.zeros((n_trees, splits), dtype=bool)
        # Categorical splits: one row of `_category_lookup` each (code -> goes left); its last column is where
        # NaN, negative and unlisted codes look (False: right).
        categorical = [s for t in trees for s in t.splits if not s.numerical]
        largest = max((c for s in categorical for c in s.categories), default=-1)
        self._category_at: list[tuple[int, int]] = []
        self._category_lookup = np.zeros((max(1, len(categorical)), largest + 2), dtype=bool)
        # The columns each tree's splits read (its contributions are 0 elsewhere); padding slots add to `width`.
        slots = max(1, max(len({s.feature for s in t.splits}) for t in trees))
        self._slot_column = np.full((n_trees, slots), width, dtype=np.int64)
        self._table = np.zeros((n_trees, self._patterns, slots))
        # Each pattern's leaf value (what the tree adds to the raw score); NaN where no row can take it.
        self._leaf_value = np.full((n_trees, self._patterns), np.nan)
        self.expected = 0.0
        synthetic = []
        for t, tree in enumerate(trees):
            for i, split in enumerate(tree.splits):
                self._feature[t, i] = split.feature
                if not split.numerical:
                    self._category_lookup[len(self._category_at), sorted(split.categories)] = True
                    self._category_at.append((t, i))
                    continue
                self._threshold[t, i] = split.threshold
                self._nan_left[t, i] = _goes_left(split, math.nan)
                self._zero_flip[t, i] = _goes_left(split, 0.0) != (split.threshold >= 0.0)
            columns = sorted({s.feature for s in tree.splits})
            self._slot_column[t, : len(columns)] = columns
            feasible, rows = [], []
            for pattern in range(2 ** len(tree.splits)):
                row = tree.synthetic_row(pattern, width)
                if row is not None:
                    feasible.append(pattern)
                    rows.append(row)
            block = np.vstack(rows)
            contrib = booster.predict(block, start_iteration=t, num_iteration=1, pred_contrib=True)
            leaves = booster.predict(block, start_iteration=t, num_iteration=1, pred_leaf=True)
            self._leaf_value[t, feasible] = booster.predict(
                block, start_iteration=t, num_iteration=1, raw_score=True
            )
            expected_leaves = [tree.leaf(p) for p in feasible]
            if not np.array_equal(np.asarray(leaves).reshape(-1), np.asarray(expected_leaves)):
                raise _Unsuitable(f"tree {t}: LightGBM sends a synthetic row to another leaf")
            synthetic.append((t, block, feasible))
            # Patterns no row can take stay NaN: a row that takes one anyway gets `pred_contrib` instead.
            self._table[t, :, : len(columns)] = np.nan
            self._table[t, feasible, : len(columns)] = contrib[:, columns]
            self.expected += float(contrib[0, -1])
        self._flat_table = self._table.reshape(n_trees * self._patterns, slots)
        self._tree_offset = np.arange(n_trees, dtype=np.int64) * self._patterns
        self._booster = booster
        self._category_trees = np.asarray([t for t, _ in self._category_at], dtype=np.int64)
        self._category_splits = np.asarray([i for _, i in self._category_at], dtype=np.int64)
        self._category_row = {at: k for k, at in enumerate(self._category_at)}  # (tree, split) -> lookup row
        # One contiguous table per slot, for the tree-by-tree loop of `evaluate` (rows of `_flat_table`).
        self._slot_tables = [np.ascontiguousarray(self._flat_table[:, s]) for s in range(slots)]
        for t, block, feasible in synthetic:
            if not np.array_equal(self.patterns(block)[:, t], np.asarray(feasible)):
                raise _Unsuitable(f"tree {t}: a synthetic row does not take its pattern here")
        # Last, the whole model on synthetic rows (up to `_CHECK_ROWS`, evenly spread): LightGBM's decisions at
        # every split of every tree (off a row's path too, which TreeSHAP also reads) against the tables'.
        every = np.vstack([block for _, block, _ in synthetic])
        every = every[:: max(1, -(-len(every) // _CHECK_ROWS))]
        reference = booster.predict(every, pred_contrib=True, num_threads=1)[:, :-1]
        raw, contributions = self.evaluate(every, explain=True)
        error = np.abs(contributions - reference).max()
        if not error <= 1e-9 * (1.0 + np.abs(reference).max()):
            raise _Unsuitable(f"the tables are {error:.3g} away from pred_contrib")
        # LightGBM's raw score is the leaf values added in tree order from 0.0 (`GBDT::PredictRaw`), as here:
        # the same bits, or the tables say nothing about raw scores.
        if not np.array_equal(raw, booster.predict(every, raw_score=True, num_threads=1)):
            raise _Unsuitable("the leaf values do not add up to LightGBM's raw scores bit for bit")

    @classmethod
    def build(cls, booster: object) -> ContributionTables | None:
        """The tables for `booster` (a `lightgbm.Booster`), or None when a tree has more than `MAX_SPLITS`
        splits or LightGBM disagrees with the decisions this module reproduces."""
        dump = booster.dump_model()
        if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("linear_tree"):
            return None
        trees = [_Tree(info["tree_structure"]) for info in dump["tree_info"]]
        if not trees or max(len(t.splits) for t in trees) > MAX_SPLITS:
            return None
        try:
            return cls(booster, trees, int(dump["max_feature_idx"]) + 1)
        except _Unsuitable as error:
            logger.warning("churn model: contribution tables unavailable (%s); using pred_contrib", error)
            return None

    def patterns(self, X: np.ndarray) -> np.ndarray:
        """Each row's pattern in each tree (rows, trees): bit i set when the tree's split i goes left."""
        X = _as_read(X)
        left = _numeric_left(X[:, self._feature], self._threshold, self._nan_left, self._zero_flip)
        if self._category_at:
            t, i = self._category_trees, self._category_splits
            left[:, t, i] = _category_left(X[:, self._feature[t, i]], self._category_lookup)
        patterns = left[:, :, 0].astype(np.int64)
        for i in range(1, left.shape[2]):
            patterns |= left[:, :, i].astype(np.int64) << i
        return patterns

    def _patterns_by_tree(self, columns: np.ndarray) -> np.ndarray:
        """`patterns` for many rows, split by split on `columns` (the input transposed: columns, rows):
        (trees, rows). The same decisions as `patterns`, through the same two functions."""
        n_trees, splits = self._feature.shape
        patterns = np.zeros((n_trees, columns.shape[1]), dtype=np.int64)
        category = self._category_row
        for t in range(n_trees):
            for i in range(splits):
                values = columns[self._feature[t, i]]
                if (t, i) in category:
                    left = _category_left(values, self._category_lookup[category[t, i]])
                elif self._threshold[t, i] == self._threshold[t, i]:  # a padding split (NaN) never goes left
                    left = _numeric_left(
                        values, self._threshold[t, i], self._nan_left[t, i], self._zero_flip[t, i]
                    )
                else:
                    continue
                patterns[t] |= left.astype(np.int64) << i
        return patterns

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions (rows, columns) of float64 input `X` (the booster's input columns)."""
        return self.evaluate(X, explain=True)[1]

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        """LightGBM's raw score (`predict(raw_score=True)`) of each row of `X`, bit for bit."""
        return self.evaluate(X, explain=False)[0]

    def evaluate(self, X: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(raw scores, TreeSHAP contributions or None) of float64 input `X`, from one pass over the patterns.

        A row's raw score is its leaf values added in tree order from 0.0, as LightGBM adds them; each row and
        column of the contributions is one sequential sum over the trees in tree order (adding 0.0 first).
        Whichever of the two ways below computes them (`np.cumsum` / `np.bincount` for a few rows, a loop over
        the trees for many), the same additions in the same order give the same bits, so no row's result
        depends on its neighbours."""
        X = np.asarray(X, dtype=np.float64)
        rows = len(X)
        out = np.empty((rows, self.width)) if explain else None
        if rows <= _FEW_ROWS:
            at = self.patterns(X) + self._tree_offset  # (rows, trees)
            leaves = np.zeros((rows, at.shape[1] + 1))
            leaves[:, 1:] = self._leaf_value.reshape(-1)[at]
            raw = np.cumsum(leaves, axis=1)[:, -1]
            if explain:
                values = self._flat_table[at]  # (rows, trees, slots)
                index = (np.arange(rows)[:, None, None] * (self.width + 1) + self._slot_column).reshape(-1)
                summed = np.bincount(index, weights=values.reshape(-1), minlength=rows * (self.width + 1))
                out[:] = summed.reshape(rows, self.width + 1)[:, : self.width]
        else:
            raw = np.empty(rows)
            leaf_values = self._leaf_value.reshape(-1)
            for start in range(0, rows, _CHUNK_ROWS):
                columns = np.ascontiguousarray(_as_read(X[start : start + _CHUNK_ROWS]).T)
                n = columns.shape[1]
                patterns = self._patterns_by_tree(columns) + self._tree_offset[:, None]
                total = np.zeros(n)
                looked_up = np.empty(n)
                for t in range(patterns.shape[0]):
                    np.take(leaf_values, patterns[t], out=looked_up, mode="clip")
                    np.add(total, looked_up, out=total)
                raw[start : start + n] = total
                if not explain:
                    continue
                summed = np.zeros((self.width + 1, n))
                for t in range(patterns.shape[0]):
                    for s, column in enumerate(self._slot_column[t]):
                        if column < self.width:
                            np.take(self._slot_tables[s], patterns[t], out=looked_up, mode="clip")
                            np.add(summed[column], looked_up, out=summed[column])
                out[start : start + n] = summed[: self.width].T
        unknown = np.flatnonzero(np.isnan(raw) | (np.isnan(out).any(axis=1) if explain else False))
        if len(unknown):  # not expected (every pattern a row can take has a synthetic row): LightGBM decides
            logger.warning("contribution tables: %d rows took an unforeseen branch pattern", len(unknown))
            raw[unknown] = self._booster.predict(X[unknown], raw_score=True, num_threads=1)
            if explain:
                out[unknown] = self._booster.predict(X[unknown], pred_contrib=True, num_threads=1)[:, :-1]
        return raw, out


def _as_read(X: np.ndarray) -> np.ndarray:
    """`X` as LightGBM reads dense input: values within its zero threshold of 0 are 0."""
    return np.where(np.abs(X) <= _ZERO, 0.0, X)


def _numeric_left(values: np.ndarray, threshold: object, nan_left: object, zero_flip: object) -> np.ndarray:
    """Which values go left at numerical splits (arrays broadcast): `Tree::NumericalDecision`."""
    with np.errstate(invalid="ignore"):
        left = values <= threshold  # NaN (and a NaN threshold): False
    left |= np.isnan(values) & nan_left
    left ^= (values == 0.0) & zero_flip
    return left


def _category_left(values: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Which values go left at categorical splits: `Tree::CategoricalDecision`, which truncates toward 0 first
    (-0.5 is category 0); NaN and codes below 0 go right. `lookup`: code -> left (its last entry False), for
    one split (values: any shape) or for k splits (k, codes; values: (rows, k))."""
    codes = np.trunc(values)
    last = lookup.shape[-1] - 1
    with np.errstate(invalid="ignore"):
        usable = (codes >= 0) & (codes < last)
    codes = np.where(usable, codes, last).astype(np.int64)
    return lookup[codes] if lookup.ndim == 1 else lookup[np.arange(len(lookup)), codes]


class _Unsuitable(Exception):
    pass
