"""Seeded perturbations of a vCoT input: who lends its infills or frames to whom, and shuffled words.

    partners = derangement(len(items), seed)          # item i borrows from item partners[i] != i
    shuffle_words("the red circle moves up", "s0|item-3|f5|0")
    order = shuffle_order(4, "s0|item-3|f5")           # infill k goes where infill order[k] was

Both are pure functions of their arguments, so every rank, every resume and every checkpoint
perturbs the same item the same way, and the paired differences compare like with like.
"""

from __future__ import annotations

import random

import numpy as np

# Salts keep these streams apart from every other use of the same --seed (items, bootstraps).
_DERANGEMENT_SALT = 0x5A1F


def derangement(n: int, seed: int) -> list[int]:
    """A uniformly drawn permutation of range(n) without a fixed point, the same for the same (n, seed).

    Rejection sampling: a random permutation has no fixed point with probability ~1/e, so this
    takes about 2.7 draws on average, and every derangement is equally likely (unlike a single
    Sattolo cycle, which would pair items only in one long ring).
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    rng = np.random.default_rng([_DERANGEMENT_SALT, int(seed), n])
    identity = np.arange(n)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == identity):
            return [int(i) for i in perm]


def shuffle_words(text: str, key: str) -> str:
    """The whitespace-separated words of `text` in a seeded random order (the multiset is kept).

    When the words allow another order, the result differs from the input: an unchanged infill
    would count as "perturbed" and pull the measured drop towards zero.
    """
    words = text.split()
    # random.Random seeds a str through SHA-512: stable across processes, unlike hash(str).
    rng = random.Random(key)
    if len(set(words)) < 2:
        return " ".join(words)
    shuffled = list(words)
    while shuffled == words:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def shuffle_order(n: int, key: str) -> list[int]:
    """A seeded permutation of range(n) that is never the identity when n >= 2 (n < 2: the identity).

    `[texts[i] for i in shuffle_order(len(texts), key)]` puts a video's own infills in another order: the
    words and the frames stay, only which infill sits between which frames changes. The identity is
    excluded for the reason `shuffle_words` keeps the words from staying put: an unchanged input would
    pull the measured drop towards zero.
    """
    if n < 0:
        raise ValueError(f"shuffle_order needs n >= 0, got {n}")
    order = list(range(n))
    if n < 2:
        return order
    rng = random.Random(key)
    shuffled = list(order)
    while shuffled == order:
        rng.shuffle(shuffled)
    return shuffled
