"""The `inprocess` backend: the engine in this process (the default), and the one place
that builds an engine from settings (the daemon builds its engine here too)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..engine import Engine
from ..engine.costs import CostCurve
from ..errors import ModelError
from ..models import corpus
from ..models.cost_cache import curve_for
from ..models.loader import Loaded, load, same_vocab


@dataclass
class Built:
    engine: Engine
    target: Loaded
    draft: Loaded | None


def build(target: Loaded, draft: Loaded | None = None, cache_bytes: int = 2048 << 20,
          cost: CostCurve | None = None) -> Built:
    """An engine over loaded models: a draft model, or a Gemma 4 assistant head, or none."""
    assistant = draft is not None and draft.is_assistant
    if draft is not None and not assistant:
        same_vocab(target.tokenizer, draft.tokenizer)
    if assistant and draft.model.config.get_text_config().vocab_size != target.model.config.get_text_config().vocab_size:
        raise ModelError("the Gemma 4 assistant's vocabulary size differs from the target's: not its assistant")
    engine = Engine(target.model, draft.model if draft and not assistant else None, cache_bytes=cache_bytes,
                    assistant=draft.model if assistant else None, cost=cost)
    return Built(engine, target, draft)


def from_settings(settings: Settings) -> Built:
    """Load the models that settings name, measure (or read) the cost curve, build the engine."""
    target = load(settings.model, settings.device, settings.dtype)
    draft_spec = settings.draft_model or (str(target.preset_draft) if target.preset_draft else None)
    draft = load(draft_spec, settings.device, settings.dtype) if draft_spec else None
    # Measured once per machine and model (a few seconds), then read from the cache dir.
    built = build(target, draft, settings.cache_mb << 20, curve_for(target))
    set_retrieval(built, settings.retrieval)
    return built


def set_retrieval(built: Built, name: str) -> None:
    """Switch the retrieval corpus ("stdlib" | "none") without reloading the model."""
    if name == "none":
        built.engine.retrieval = None
    elif built.engine.retrieval is None:
        built.engine.retrieval = corpus.index_for(built.target.tokenizer)
