"""The command line: one file per verb. The only layer that prints or exits."""

import logging

# peft imports torchao when it is installed (for int8 export); on a CPU build torchao then
# logs that its CUDA-only kernels did not load, and torch that torchao registers enums the
# old way: noise on every command, set quiet before any verb module imports peft.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
