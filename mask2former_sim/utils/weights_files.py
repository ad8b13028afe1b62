"""Reading weight files that are not ``torch.save`` archives, and naming the keys a load left out.

- :func:`load_numpy_pickle` — a detectron2 / Mask2Former model-zoo ``.pkl`` (``{"model": {name: ndarray}, ...}``),
  unpickled with numpy arrays and plain containers only: a weights file holds no code, so any other global is
  refused.
- :func:`short_list` — the first keys of a list and how many more, for the load reports and errors.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable

__all__ = ["load_numpy_pickle", "short_list"]


class _NumpyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")
        return super().find_class(module, name)


def load_numpy_pickle(path: str) -> Any:
    """The object pickled in ``path`` (Python 2 pickles read as latin-1), built from numpy and plain types only.

    Raises:
        pickle.UnpicklingError: the file names a global other than numpy's arrays and ``OrderedDict``.
    """
    with open(path, "rb") as f:
        return _NumpyUnpickler(f, encoding="latin1").load()


def short_list(keys: Iterable[str], limit: int = 20) -> str:
    """``"a, b, ... (n more)"``: the first ``limit`` of ``keys``."""
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
