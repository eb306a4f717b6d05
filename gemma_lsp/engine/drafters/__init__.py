"""Drafters propose the next tokens; the target model decides.

A drafter never affects *what* is generated, only how many target forwards it
takes: every proposal is verified by the target (see ../speculative.py).
`ctx` is always the full token sequence so far: prompt + generated, ending with
the token the target chose last (not yet fed to the model).
"""

from .base import AutoDrafter, Draft, Drafter, NoDrafter
from .copying import NGramDrafter, SuggestionDrafter
from .models import AssistantDrafter, ModelDrafter, draft_reuse
from .retrieval import RetrievalDrafter, TokenIndex

__all__ = ["AssistantDrafter", "AutoDrafter", "Draft", "Drafter", "ModelDrafter", "NGramDrafter", "NoDrafter",
           "RetrievalDrafter", "SuggestionDrafter", "TokenIndex", "draft_reuse"]
