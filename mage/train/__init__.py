"""The training engine: one stage of MAGE training, on one process or a group of ranks.

`train_stage` (loop.py) is the loop; `seed_build` / `stable_seed` (seeding.py) the seeding every
entry point shares; schedule.py the optimizer and LR schedule; checkpoint.py resumable state.
"""

from mage.train.loop import NonFiniteLossError, build_dataset, train_stage
from mage.train.seeding import seed_build, stable_seed

__all__ = ["NonFiniteLossError", "build_dataset", "seed_build", "stable_seed", "train_stage"]
