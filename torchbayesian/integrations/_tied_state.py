"""State dicts of models with tied tensors: one tensor under several names, on saving and loading."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

__all__ = ["missing_untied", "unshared"]


def unshared(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Return ``state_dict`` with a tied tensor cloned under each name but the first (safetensors refuses ties)."""
    seen: set[tuple[int, int]] = set()
    result = {}
    for key, tensor in state_dict.items():
        storage = _storage(tensor)
        result[key] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    return result


def missing_untied(expected: Mapping[str, Tensor], loaded: Iterable[str], missing_keys: Iterable[str]) -> list[str]:
    """Return the ``missing_keys`` sharing no tensor with a ``loaded`` key: a tied tensor may be stored once."""
    loaded_storages = {_storage(expected[key]) for key in loaded if key in expected}
    return [key for key in missing_keys if _storage(expected[key]) not in loaded_storages]


def _storage(tensor: Tensor) -> tuple[int, int]:
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset()
