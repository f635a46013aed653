"""The "did you mean" hint of every error about an unknown name, in all three packages.

Recipes, study specs, model families, metrics, I-RAVEN configurations and the evaluation's settings
all refuse an unknown name with the closest known ones, through `did_you_mean`; two wordings exist,
the aside of a sentence that goes on (`unknown key 'sedd' (did you mean 'seed'?)`) and a sentence of
its own (`Unknown task 'vcott'. Did you mean 'vcot'?`).

    raise RecipeError(f"{where}: unknown key '{k}'{did_you_mean(k, names)}")
"""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(name, known: Iterable[str], *, n: int = 1, cutoff: float = 0.6, substring: bool = False,
                 sentence: bool = False) -> str:
    """The hint naming up to `n` known names close to `name` (`difflib` ratio >= `cutoff`); "" when none is.

    `substring`: when nothing is close, the first known name containing `name` (case-insensitive), as
    people type "nine" for "distribute_nine". `sentence`: `" Did you mean 'a' or 'b'?"` rather than the
    aside `" (did you mean 'a'?)"`."""
    known = list(known)
    name = str(name)
    close = difflib.get_close_matches(name, known, n=n, cutoff=cutoff)
    if not close and substring and name:
        close = [k for k in known if name.lower() in k][:1]
    if not close:
        return ""
    names = " or ".join(f"'{c}'" for c in close)
    return f" Did you mean {names}?" if sentence else f" (did you mean {names}?)"
