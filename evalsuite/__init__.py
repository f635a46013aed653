"""Evaluation suite: vCoT gain, perturbation robustness and I-RAVEN transfer on every checkpoint.

    python -m evalsuite all ckpt/            # see evalsuite/cli.py for the options

Layout: `cli` (commands) -> `runner` (skip, resume, ranks, MLflow) -> `tasks` (registry; one task per
file) using `benchmarks` (items and frames), `prompts`, `infills` (+ cache), `generation`, `scoring`,
`extraction`, `comparisons` (statistics via `stats` and `metrics`), `floors` (options-only guessers),
`outputs` (files), `tracking`, `report` (findings and verdicts). Importing the package imports nothing heavy.
"""
