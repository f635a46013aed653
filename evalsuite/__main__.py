"""Evaluate checkpoints: vCoT gain (and the tasks to come), then the comparison report.

    python -m evalsuite all ckpt/ [--benchmark synthetic|egoschema] [--frames 5 10] [--limit N]
    python -m evalsuite vcot ckpt/video_100k ckpt/image_100k --infills model:models/generator
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m evalsuite all ckpt/

See `evalsuite.cli` for every option.
"""

import sys

from evalsuite.cli import main

if __name__ == "__main__":
    sys.exit(main())
