"""The real local model (the bundled SmolLM2 GGUF), fetched and converted once per cache."""

from __future__ import annotations

from rich.console import Console

from services.llm.local_model import LocalModel
from services.llm.model_files import prepare_local_model
from services.settings import get_settings


def load_bundled_model(*, chat_template: bool = True) -> LocalModel:
    source = prepare_local_model(
        None, cache_dir=get_settings().cache_dir, console=Console(stderr=True)
    )
    return LocalModel(source, chat_template=chat_template)
