"""Evaluate checkpoints: vCoT gain (and the tasks to come), then the comparison report.

    python -m evalsuite all ckpt/ [--benchmark synthetic|egoschema] [--frames 5 10] [--limit N]
    python -m evalsuite vcot ckpt/video_100k ckpt/image_100k --infills model:models/generator
    python -m evalsuite all ckpt/ --benchmark egoschema --data data/egoschema \
        --judge models/Qwen2.5-7B-Instruct --infills model:models/generator --rephraser models/Qwen2.5-7B-Instruct
    python -m evalsuite export ckpt/ --format lmms-eval     # EgoSchema results beside lmms-eval runs
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m evalsuite all ckpt/

`--benchmark egoschema` runs the paper's protocol (`--protocol paper`, see `evalsuite.config`) unless
`--protocol custom` is given. See `evalsuite.cli` for every option.
"""

import sys

from evalsuite.cli import main

if __name__ == "__main__":
    sys.exit(main())
