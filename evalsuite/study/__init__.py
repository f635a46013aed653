"""Studies: arms x budgets x seeds, each run trained to its own budget, evaluated, then reported.

    run.py         `python -m evalsuite study studies/NAME.yaml [--dry_run]`: the spec, the run list, the
                   state in `study.json`, the dry run's cost, and the steps (build, train, evaluate, report)
    launchers.py   how the steps' commands run: on this machine or as submitit (Slurm) jobs

Its report is `evalsuite.report.study`.
"""
