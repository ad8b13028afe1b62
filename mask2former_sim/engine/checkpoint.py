"""Checkpoints that hold everything needed to continue training, written atomically.

A checkpoint is one ``torch.save`` file with
``{"model", "optimizer", "scheduler", "scaler", "iteration", "rng", "rng_per_rank", "extra", "cfg"}``:
``iteration`` is the index of the last completed iteration (training resumes at ``iteration + 1``), ``rng``
the Python/NumPy/torch/CUDA generator states of the saving process (``rng_per_rank``: of every process),
``extra`` the ``state_dict()`` of further stateful objects (a teacher model, prototypes, ...), ``cfg`` the
config as YAML. Everything is stored as tensors and plain Python types so ``torch.load(weights_only=True)``
reads it.

Atomic writes: the file goes to ``<name>.tmp`` in the same folder, is flushed and fsync'ed, then renamed over
``<name>`` with ``os.replace``; the ``last_checkpoint`` text file naming it is updated the same way. A process
killed at any moment leaves either the previous complete state or the new complete state, so ``--resume``
never picks a truncated file.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..interop.official import NETWORK_PREFIXES, REBUILT_BUFFERS, from_official, is_official
from ..utils import comm
from ..utils.weights_files import load_numpy_pickle, short_list

__all__ = [
    "Checkpointer",
    "CheckpointError",
    "load_checkpoint_file",
    "load_model_weights",
    "read_model_state",
    "unwrap_model",
    "get_rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"


class CheckpointError(RuntimeError):
    """A file that should be a checkpoint cannot be read as one."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (the model itself otherwise)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def get_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states as tensors and plain types (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generator states written by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "checkpoint holds CUDA RNG states for %d devices, this machine has %d; CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path + ".tmp"``, flush + fsync, then ``os.replace`` onto ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` with the same temp-file + fsync + rename protocol."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    If the file holds Python objects beyond tensors and plain types, and ``allow_pickle`` is set (a trusted
    file, e.g. one written by an older version into our own output folder), it is read with
    ``weights_only=False`` and a warning is logged; otherwise :class:`CheckpointError` explains the options.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc).lower():
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint (expected a file written by torch.save): {exc}"
            ) from exc
        if not allow_pickle:
            raise CheckpointError(
                f"{path} holds Python objects that torch.load(weights_only=True) refuses to read. If you trust "
                f"the file, re-save its state dict: torch.save(torch.load(path, weights_only=False)['model'], "
                f"new_path). Details: {str(exc).splitlines()[0]}"
            ) from exc
        logger.warning("%s is not loadable with weights_only=True; loading it as a trusted pickle", path)
    except Exception as exc:  # truncated zip, random bytes, text file, ...
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (expected a file written by torch.save; the file may "
            f"be truncated or of another format): {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path} could not be unpickled: {type(exc).__name__}: {exc}") from exc


# model keys renamed since the format they were saved in: the mode's state moved under ``supervision``, and the
# model no longer records its iteration (the checkpoint's own "iteration" does)
_RENAMED_PREFIXES = (("sim.", "supervision.sim."), ("pairwise_schedule.", "supervision.pairwise_schedule."))
_DROPPED_KEYS = ("iteration",)


def upgrade_model_keys(state: Mapping[str, Any]) -> Dict[str, Any]:
    """``state`` with the model keys of older checkpoints renamed to the current ones (``module.`` stripped)."""
    out: Dict[str, Any] = {}
    for key, value in state.items():
        key = str(key)
        while key.startswith("module."):
            key = key[len("module.") :]
        if key in _DROPPED_KEYS:
            continue
        for old, new in _RENAMED_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


def _extract_state_dict(obj: Any, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path} does not hold model weights: expected a state dict or a dict with a 'model' state dict, "
            f"found {type(obj).__name__}"
        )
    state: Dict[str, torch.Tensor] = {}
    for key, value in upgrade_model_keys(obj).items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if isinstance(value, torch.Tensor):
            state[key] = value
    if not state:
        raise CheckpointError(f"{path} holds a dict without any tensor; expected model weights")
    return state


def read_model_state(path: str, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The model tensors of a weights file: our checkpoint, a raw state dict, ``{"state_dict": ...}``, or a
    detectron2 ``.pkl`` (``{"model": {name: ndarray}, "__author__": ...}``, read with numpy arrays and plain types
    only); ``module.`` prefixes stripped and older key names upgraded."""
    if path.endswith(".pkl"):
        return _extract_state_dict(_read_detectron2_pickle(path), path)
    return _extract_state_dict(load_checkpoint_file(path, allow_pickle=allow_pickle), path)


def _read_detectron2_pickle(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return load_numpy_pickle(path)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable detectron2 .pkl checkpoint (a pickle of numpy arrays): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


TRAINING_STATE_PREFIXES = ("supervision.", "criterion.")  # model keys outside the network: the mode's state

# tensors whose first dimension is the number of classes: a checkpoint of another class count (COCO weights
# fine-tuned on one class) leaves them at their initialisation, as detectron2 does for its predictors
_CLASS_SIZED = ("transformer_decoder.class_embed.weight", "transformer_decoder.class_embed.bias", "prototypes")


def load_model_weights(
    model: nn.Module, path: str, allow_pickle: bool = False, strict: bool = False
) -> Tuple[List[str], List[str], List[str]]:
    """Load weights into ``model`` (DDP unwrapped); returns (missing, unexpected, skipped class-sized keys).

    ``path``: any file :func:`read_model_state` reads, in our names or in the official Mask2Former names
    (``sem_seg_head.*``, detectron2 ResNet or Swin backbone; :mod:`mask2former_sim.interop.official`). What did not
    load is logged both ways (the model's keys the file lacks, the file's keys the model lacks), as detectron2's
    checkpointer does. The network's keys count as missing; training state that a file of weights need not hold
    (SIM's teacher, built from the loaded student, its prototypes, schedule buffers) is only logged, and a model
    built for inference (``build_model(cfg, training=False)``) loads the student alone from any checkpoint.

    Raises:
        CheckpointError: a tensor's shape differs from the model's (the key named), except a class head (and SIM's
            prototypes) of another class count, which is skipped with a message; with ``strict``, a network key
            the file does not provide (the first keys named, and their count): evaluation, the demo and export
            need every weight, training may start from part of them.
    """
    model = unwrap_model(model)
    state = read_model_state(path, allow_pickle=allow_pickle)
    source = "ours"
    if is_official(state):
        try:
            state = from_official(state, model)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        source = "official Mask2Former names"
    own = model.state_dict()
    skipped = []
    for key in list(state):
        if key not in own or tuple(own[key].shape) == tuple(state[key].shape):
            continue
        found, expected = tuple(state[key].shape), tuple(own[key].shape)
        if key.endswith(_CLASS_SIZED) and found[1:] == expected[1:]:
            logger.info(
                "%s: '%s' has %d classes in the file, %d in the model (another class count): skipped, it keeps "
                "its initialisation",
                path,
                key,
                found[0],
                expected[0],
            )
            skipped.append(key)
            del state[key]
            continue
        raise CheckpointError(f"{path}: '{key}' has shape {found} in the file and {expected} in the model")
    inference_only = hasattr(model, "supervision") and model.supervision is None
    unused_training_state = [k for k in state if inference_only and k.startswith(TRAINING_STATE_PREFIXES)]
    for key in unused_training_state:  # a model built for inference loads the student alone
        del state[key]
    if unused_training_state:
        logger.info(
            "%s: %d keys of training state (SIM's teacher, prototypes, schedule) not needed by a model built for "
            "inference",
            path,
            len(unused_training_state),
        )
    result = model.load_state_dict(state, strict=False)
    is_network = _network_key_test(model)
    missing = [k for k in result.missing_keys if k not in skipped and is_network(k)]
    training_state = [k for k in result.missing_keys if k not in skipped and not is_network(k)]
    if missing and strict:
        raise CheckpointError(
            f"{path} leaves {len(missing)} weights of the network unloaded: {short_list(missing, 5)}. "
            "MODEL.WEIGHTS must be a checkpoint of this config's network (evaluation, the demo and export need "
            "every weight)"
        )
    if missing:
        logger.warning("%s: %d model keys not in the file: %s", path, len(missing), short_list(missing))
    if training_state:
        logger.info(
            "%s: %d keys of training state not in the file, they start fresh (SIM's teacher copies the loaded "
            "student): %s",
            path,
            len(training_state),
            short_list(training_state, 5),
        )
    if result.unexpected_keys:
        logger.warning(
            "%s: %d keys in the file unused by the model: %s",
            path,
            len(result.unexpected_keys),
            short_list(result.unexpected_keys),
        )
    logger.info("loaded %d tensors from %s (%s)", len(state) - len(result.unexpected_keys), path, source)
    return missing, list(result.unexpected_keys), skipped


def _network_key_test(model: nn.Module):
    """Which keys belong to the network: our meta-architecture's backbone and heads, or every key of a plain module."""
    if all(hasattr(model, name.rstrip(".")) for name in NETWORK_PREFIXES):
        return lambda key: key.startswith(NETWORK_PREFIXES) and not key.endswith(REBUILT_BUFFERS)
    return lambda key: True


class Checkpointer:
    """Save and restore model, optimizer, scheduler, AMP scaler, iteration, RNG and extra state.

    Args:
        model: the model (a DDP wrapper is unwrapped when saving and loading).
        save_dir: folder for checkpoints and the ``last_checkpoint`` file.
        optimizer, scheduler, scaler: optional objects with ``state_dict``/``load_state_dict``.
        extra: further named stateful objects (e.g. ``{"teacher": ema_model, "prototypes": bank}``).
        cfg: config whose YAML (``cfg.dump()``) is stored in each checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Optional[Any] = None,
        scaler: Optional[Any] = None,
        extra: Optional[Dict[str, Any]] = None,
        cfg: Optional[Any] = None,
    ) -> None:
        self.model = model
        self.save_dir = save_dir
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.extra = dict(extra or {})
        self.cfg = cfg

    def _state_objects(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    def save(self, name: str, iteration: int) -> Optional[str]:
        """Write ``save_dir/<name>.pth`` atomically and point ``last_checkpoint`` at it; returns the path.

        Call on every process: RNG states are gathered from all ranks; only the main process writes.
        """
        rng = get_rng_state()
        rng_per_rank = comm.all_gather(rng)
        if not comm.is_main_process():
            return None
        data: Dict[str, Any] = {"model": unwrap_model(self.model).state_dict(), "iteration": int(iteration)}
        for key, obj in self._state_objects().items():
            data[key] = obj.state_dict() if obj is not None else None
        data["rng"] = rng
        data["rng_per_rank"] = rng_per_rank
        data["extra"] = {key: obj.state_dict() for key, obj in self.extra.items()}
        data["cfg"] = self.cfg.dump() if self.cfg is not None else ""
        os.makedirs(self.save_dir, exist_ok=True)
        filename = name if name.endswith(".pth") else f"{name}.pth"
        path = os.path.join(self.save_dir, filename)
        atomic_torch_save(data, path)
        atomic_write_text(filename, os.path.join(self.save_dir, LAST_CHECKPOINT_FILE))
        logger.info("saved checkpoint %s (iteration %d)", path, iteration)
        return path

    def last_checkpoint_path(self) -> Optional[str]:
        """The file named in ``save_dir/last_checkpoint``, or None when there is no such record."""
        record = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        if not os.path.isfile(record):
            return None
        with open(record) as f:
            name = f.read().strip()
        if not name:
            raise CheckpointError(f"{record} is empty; expected the file name of the last checkpoint")
        return os.path.join(self.save_dir, name)

    def load(self, path: str) -> int:
        """Restore everything from our checkpoint at ``path``; returns the stored iteration."""
        data = load_checkpoint_file(path, allow_pickle=True)
        if not isinstance(data, Mapping) or "model" not in data or "iteration" not in data:
            found = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
            raise CheckpointError(
                f"{path} is not a training checkpoint: expected a dict with 'model' and 'iteration', found {found}"
            )
        unwrap_model(self.model).load_state_dict(upgrade_model_keys(data["model"]))
        for key, obj in self._state_objects().items():
            if obj is None:
                continue
            if data.get(key) is None:
                logger.warning("%s has no %s state; %s starts fresh", path, key, key)
                continue
            try:
                obj.load_state_dict(data[key])
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: cannot restore the {key} state: {exc}") from exc
        stored_extra = data.get("extra") or {}
        for key, obj in self.extra.items():
            if key in stored_extra:
                obj.load_state_dict(stored_extra[key])
            else:
                logger.warning("%s has no extra state '%s'; it starts fresh", path, key)
        self._restore_rng(data, path)
        logger.info("resumed from %s (iteration %d)", path, data["iteration"])
        return int(data["iteration"])

    def _restore_rng(self, data: Mapping[str, Any], path: str) -> None:
        per_rank = data.get("rng_per_rank") or []
        if len(per_rank) == comm.get_world_size():
            set_rng_state(per_rank[comm.get_rank()])
        elif data.get("rng") is not None and comm.get_world_size() == 1:
            set_rng_state(data["rng"])
        else:
            logger.warning(
                "%s was written by %d processes, now %d run: RNG states not restored",
                path,
                len(per_rank),
                comm.get_world_size(),
            )

    def resume_or_load(self, path: str, resume: bool = True) -> int:
        """Return the iteration to start at.

        ``resume`` and a ``last_checkpoint`` record in ``save_dir``: restore everything from the file it names
        and return its iteration + 1. Otherwise load only model weights from ``path`` (if given) and return 0.
        """
        if resume:
            last = self.last_checkpoint_path()
            if last is not None:
                if not os.path.isfile(last):
                    raise CheckpointError(
                        f"{os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)} names {last}, which does not exist"
                    )
                return self.load(last) + 1
            logger.info("no checkpoint to resume in %s; starting from iteration 0", self.save_dir)
        if path:
            load_model_weights(self.model, path)
        return 0
