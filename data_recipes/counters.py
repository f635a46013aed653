"""The names of the units a sample is counted in, declared once for the build, the trainer and the report.

Who counts what:
- `data_recipes.build` counts `MANIFEST_COUNTERS` per sample and writes their sums to a manifest's
  `counts` (read by `python -m data_recipes audit`, the trainer's plan and its schedule length);
- `train.accounting` counts `CONSUMED_COUNTERS` per sample of every micro-batch and the trainer writes
  their sums to run.json's `consumed` (read by `--match_to`, the report's scale-match audit, studies).

Two mechanisms make one amount of data equal to another, each over the units it can see, each list
declared here only:
- `SIZE_FROM_UNITS` (build time), a recipe's `size_from: {recipe, unit}` (`data_recipes.recipe`): what a
  manifest knows. No supervised tokens: which tokens are supervised is decided by the trainer's chat
  template, not by the build.
- `TRAIN_MATCH_UNITS` (train time), the trainer's `--match_by` / `--budget_unit` (`train.config`): what a
  run consumes and can stop at exactly (`train.accounting.plan`). Images are counted and audited, but not
  offered as a budget.
"""

SAMPLES = "samples"
IMAGES = "images"
FRAMES = "frames"
TEXT_CHARS = "text_chars"
TEXT_TOKENS = "text_tokens"
SUPERVISED_TOKENS = "supervised_tokens"
VISUAL_TOKENS = "visual_tokens"

TOKEN_UNITS = (VISUAL_TOKENS, TEXT_TOKENS)
"""Units only a model's processor can count: a count in them holds for that model (and video path) only."""

MANIFEST_COUNTERS = (SAMPLES, IMAGES, FRAMES, TEXT_CHARS, TEXT_TOKENS, VISUAL_TOKENS)
"""A manifest's `counts` (the token ones only when the build was given a model), in audit-table order."""

CONSUMED_COUNTERS = (SAMPLES, IMAGES, TEXT_TOKENS, SUPERVISED_TOKENS, VISUAL_TOKENS)
"""run.json's `consumed`. The order is the column order of `train.accounting`'s per-sample matrices."""

SIZE_FROM_UNITS = (SAMPLES, IMAGES, *TOKEN_UNITS)
"""What a recipe's build-time `size_from.unit` accepts: units a manifest has counted (see the module docstring)."""

TRAIN_MATCH_UNITS = (SAMPLES, *TOKEN_UNITS, SUPERVISED_TOKENS)
"""What the trainer's `--match_by` / `--budget_unit` accept: units a run consumes (see the module docstring)."""
