"""What is read from finished evaluations: reports for the researcher and files for other tools.

    evaluation.py   `python -m evalsuite report CKPT_DIR`: CKPT_DIR/report.md (findings and their verdicts,
                    tables), report/*.png and report/metrics.csv, from every `eval/<task>/` under CKPT_DIR
    study.py        a study's report.md and metrics.csv across arms, budgets and seeds (`evalsuite.study`)
    plots.py        the figures of both reports
    export.py       `python -m evalsuite export CKPT_DIR --format lmms-eval`: EgoSchema results in
                    lmms-eval's layout

Nothing is imported here: the report's figures pull in matplotlib only when a report is written.
"""
