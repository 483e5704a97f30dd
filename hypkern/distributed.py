"""Old import path of :mod:`hypkern.losses.distributed` (kept so existing imports work)."""
from .losses.distributed import *  # noqa: F401,F403
from .losses.distributed import __all__  # noqa: F401
