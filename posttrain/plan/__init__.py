"""``posttrain plan``: a memory model of the recipes (not a training recipe), registered as a
command in ``posttrain/cli.py``. The model is :mod:`posttrain.plan.memory`; its formulas are
explained in ``docs/scale.md``."""

from posttrain.plan.memory import *  # noqa: F403
from posttrain.plan.memory import __all__  # noqa: F401
