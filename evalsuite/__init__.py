"""Evaluation suite: vCoT gain, perturbation robustness and I-RAVEN transfer on every checkpoint.

    python -m evalsuite all ckpt/            # every task on every checkpoint, then the report
    python -m evalsuite study studies/NAME.yaml
    python -m evalsuite.benchmarks.iraven generate --out DIR --per-config N --seed S

The map of the package (each module's docstring says who writes and who reads what it holds):

    cli.py, __main__.py   the commands (all, vcot, shuffle, iraven, list, report, export, study)
    config.py             `EvalConfig`: every flag, typed; the paper / custom protocols
    tasks/                one task per file: vcot.py, shuffle.py, iraven.py; base.py is the contract
    benchmarks/           the data a task asks questions about:
      video_qa.py           5-way video questions: the synthetic test split and EgoSchema
      iraven/               I-RAVEN puzzles: generator, loader of the official files, checker, rule groups
    prompts.py            every prompt, I-RAVEN's included
    infills.py            vCoT infills and captions (self, model:DIR, oracle, file:PATH) and their cache
    perturb.py            the shuffle task's seeded derangements and word shuffles
    generation.py         `ChatModel`: greedy answers of the evaluated model, infill generator, judge
    scoring.py            loglik scoring of the options (`--scoring loglik`)
    extraction.py         the option a generated answer chose (`--scoring generate`), else the judge
    floors.py             options-only guessers: the accuracy the options alone reach
    comparisons.py        a task's metrics.json: condition accuracies and paired differences
    stats.py              bootstrap CIs, paired differences, McNemar, the across-seeds bootstrap
    metrics/              the same statistics as offline `evaluate` scripts, loaded by path
    report/               what is read from finished evaluations:
      evaluation.py         ckpt/report.md: findings and verdicts, tables, metrics.csv
      study.py              a study's report.md across arms, budgets and seeds
      plots.py              the figures of both reports
      export.py             EgoSchema results in lmms-eval's layout
    study/                arms x budgets x seeds: run.py (spec, run list, state, dry run), launchers.py
    runner.py             skip what is done, resume what was interrupted, merge ranks
    checkpoints.py, resources.py, distributed.py, framecache.py, outputs.py, tracking.py
                          finding and loading checkpoints, models loaded on use, ranks, the decoded-frame
                          cache, `eval/<task>/` files, MLflow

A run goes `cli` -> `runner` -> a task in `tasks`, which takes items from `benchmarks`, prompts from
`prompts`, infills from `infills`, answers through `scoring` or `generation` + `extraction`, and writes
`comparisons`' summary through `outputs`; `report` reads what the runs wrote. Importing the package
imports nothing heavy.
"""
