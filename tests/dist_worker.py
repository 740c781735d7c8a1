"""Run by the distributed tests under torchrun: one pretraining run from a JSON config.

torchrun --standalone --nproc_per_node 2 tests/dist_worker.py '{"preset": "nano", ...}' OUT
    [--resume] [--stop-at N]
"""

import json
import sys

from llmos.common import set_threads
from llmos.train.pretrain import PretrainConfig, pretrain

if __name__ == "__main__":
    set_threads()
    stop = sys.argv[sys.argv.index("--stop-at") + 1] if "--stop-at" in sys.argv else None
    pretrain(
        PretrainConfig(**json.loads(sys.argv[1])),
        sys.argv[2],
        resume="--resume" in sys.argv,
        stop_at=int(stop) if stop else None,
    )
