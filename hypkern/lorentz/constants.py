"""Clipping constants shared by every backend (reference, Triton, C++/CUDA in csrc/hk_math.h).

Change one here and in ``csrc/hk_math.h`` together; ``tests/test_constants.py`` checks they agree.
"""
import math

#: ``asin``/``acos`` arguments are clipped into ``[-1 + ASIN_EPS, 1 - ASIN_EPS]``.
ASIN_EPS = 1e-6
#: ``exp_map0`` caps ``sqrt(c)|v|`` at ``asinh(2**15)`` inside ``sinh`` (MERU's cap).
EXP_MAP_MAX = math.asinh(2.0 ** 15)
#: Below this ``r = sqrt(c)|v|`` the maps use Taylor series instead of ``sinh(r)/r``.
SMALL_R = 1e-3
#: Smallest denominator of the exterior-angle quotient.
ANGLE_DENOM_EPS = 1e-8
