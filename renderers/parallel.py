"""numba as headsplat runs it: loaded on first use, on the work-queue threading layer, one parallel call at a time.

`import renderers` neither loads numba (over half a second) nor changes its settings. Every module
holding numba kernels (renderers._cpu, renderers._paste_kernel, renderers.mesh_raster,
models.mesh_binding, models._avatar_kernels) gets numba from `load_numba()`, so the threading layer is
chosen before any of our kernels can start numba's threads, and is chosen by one function.
"""

from __future__ import annotations

import functools
import os
import threading
from types import ModuleType

#: Held around every parallel numba kernel call in headsplat. numba's work-queue threading layer must not
#: be entered from two Python threads at once, and Gradio serves requests from a thread pool; the kernels
#: use all cores anyway, so serialising them costs nothing. Re-entrant: a kernel caller may nest another.
PARALLEL_LOCK = threading.RLock()


@functools.cache
def load_numba() -> ModuleType:
    """The numba module, imported on the first call with its threading layer set to work-queue."""
    import numba

    # numba's OpenMP layer keeps its threads spinning after each parallel kernel, which starves torch's
    # own OpenMP threads between renders (posing Gaussians got 10x slower on a busy 2-core machine); the
    # plain work-queue pool sleeps instead. A user's own NUMBA_THREADING_LAYER wins.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    return numba
