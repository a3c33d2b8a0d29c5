"""The one place that imports imagen-pytorch, without touching the network.

imagen-pytorch evaluates ``get_encoded_dim('google/t5-v1_1-base')`` as a default argument of
``Unet.__init__`` at import time, which calls ``T5Config.from_pretrained`` and so reaches the
Hugging Face hub (13-28 s timeout offline, then ``OSError``). lazyslide never conditions on
text, so for the duration of the import only we answer that call with the T5-base config
(d_model 768) locally. Nothing else is patched and the patch is undone afterwards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from types import ModuleType

_module: ModuleType | None = None


@contextlib.contextmanager
def _offline_t5_config() -> Iterator[None]:
    import transformers

    cls_dict = transformers.T5Config.__dict__
    original = cls_dict.get("from_pretrained")  # normally inherited, so absent here

    def local_config(cls, *args, **kwargs):  # noqa: ANN001 - mirrors the patched signature
        return transformers.T5Config(d_model=768)

    transformers.T5Config.from_pretrained = classmethod(local_config)
    try:
        yield
    finally:
        if original is None:
            del transformers.T5Config.from_pretrained
        else:
            transformers.T5Config.from_pretrained = original


def imagen() -> ModuleType:
    """Return the ``imagen_pytorch`` module, importing it offline on first use."""
    global _module
    if _module is None:
        with _offline_t5_config(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script deprecation
            warnings.simplefilter("ignore", DeprecationWarning)  # pydantic v1-style config
            import imagen_pytorch

        _module = imagen_pytorch
    return _module
