"""The data the tasks ask questions about; nothing is imported here, so each part loads on its own.

    video_qa.py   5-way video questions: the generated `synthetic` test split and `egoschema`
                  (`load_benchmark(cfg)`: items, then their frames), read by the vcot and shuffle tasks
    iraven/       I-RAVEN puzzles: a generator, a loader of the official `.npz` files, a symbolic checker
                  and the rule groups, read by the iraven task and the report;
                  `python -m evalsuite.benchmarks.iraven generate --out DIR --per-config N --seed S`
"""
