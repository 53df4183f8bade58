"""Linear algebra over GF(2) for the `sparse-linear` language: rows are Python ints (bit c of row j
is A[j][c]), so a matrix-vector product is an AND and a popcount."""

from __future__ import annotations

import numpy as np


def inverse(rows: list[int], n: int) -> list[int] | None:
    """The inverse's rows, or None when the matrix is singular (Gauss-Jordan elimination)."""
    a, inv = list(rows), [1 << i for i in range(n)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r] >> col & 1), None)
        if pivot is None:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        inv[col], inv[pivot] = inv[pivot], inv[col]
        for r in range(n):
            if r != col and a[r] >> col & 1:
                a[r] ^= a[col]
                inv[r] ^= inv[col]
    return inv


def weight(v: int) -> int:
    return bin(v).count("1")


def cheapest_parities(inverse_rows: list[int], n: int) -> list[int]:
    """How many known bits the cheapest formula for each x bit needs, for a reader who has seen
    all of y = A·x and then reads x backwards (x[n-1] first, x[0] last).

    When x[i] is predicted, x[i+1:] are known. A formula is x[i] = XOR of y[j] (j in S) and x[c]
    (c in T, c > i); it holds for every x exactly when the rows of A in S sum to e_i plus the unit
    vectors of T. So for every choice v of the known-x part (2^(n-1-i) of them), S is fixed
    (S = (e_i + v) · A⁻¹) and the cost is |S| + |v|; the minimum over v is the answer.
    Returned in reading order: entry 0 is x[n-1]. Exhaustive, fine up to n ≈ 24.
    """
    costs = []
    for i in range(n - 1, -1, -1):
        s = np.array([inverse_rows[i]], dtype=np.uint64)  # S for each choice of the known part
        known = np.zeros(1, dtype=np.int64)  # |T| for each choice
        for c in range(i + 1, n):
            s = np.concatenate([s, s ^ np.uint64(inverse_rows[c])])
            known = np.concatenate([known, known + 1])
        costs.append(int((popcount(s) + known).min()))
    return costs


def popcount(v: np.ndarray) -> np.ndarray:
    """The number of set bits of each uint64 in `v`, as int64. numpy ≥ 2.0 has it built in
    (np.bitwise_count); the project supports numpy 1.26, where `arrows synth sparse-linear` (and so
    `arrows demo`) ended in an AttributeError: there the bits are summed in parallel (SWAR)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(v).astype(np.int64)
    v = v.astype(np.uint64)
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((v * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)  # the product wraps modulo 2^64, as wanted


def apply(rows: list[int], x: np.ndarray) -> np.ndarray:
    """y = A·x for many x at once: x is (lines, n) of 0/1, the result likewise."""
    n = x.shape[1]
    a = np.array([[r >> c & 1 for c in range(n)] for r in rows], dtype=np.uint8)
    return (x.astype(np.uint32) @ a.T.astype(np.uint32) % 2).astype(np.uint8)
