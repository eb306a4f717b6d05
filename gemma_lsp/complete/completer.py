"""One completion: document snapshot -> prompt -> engine -> postprocess.

Both the LSP server and `gemma-lsp complete` go through `Completer.complete`,
so what the CLI prints is what an editor gets.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import faults
from ..backends import Backend, inprocess
from ..backends.factory import open_backend
from ..config import Settings
from ..engine import GenerateRequest, Stats
from ..models import corpus
from .context import Chunk, select_extras, windows
from .postprocess import block_ended, postprocess, single_line_wanted
from .prompt import Prompter

log = logging.getLogger(__name__)

# Decoding may run past `timeBudgetMs` only to finish the line under way, and never past
# this many times the budget (1.8 s -> 3.6 s by default): a whole line or nothing, in time
# for editors that give up after 10 s (eglot, lsp-mode) even after a cold prompt pass.
CEILING_FACTOR = 2.0


LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".rs": "rust", ".go": "go", ".c": "c",
             ".cpp": "cpp", ".java": "java", ".lua": "lua", ".rb": "ruby", ".sh": "shellscript"}


def language_of(path: Path) -> str:
    """The LSP language id of a file read from disk (`complete`, the benchmarks), where no
    editor says it; "" when the suffix is not known."""
    return LANGUAGES.get(path.suffix, "")


@dataclass
class Snapshot:
    """The document as the editor had it when the request was made."""

    uri: str
    text: str
    offset: int  # index into `text` (Python characters) of the cursor
    language: str = ""
    path: str = ""
    chunks: list[Chunk] = field(default_factory=list)  # other files; fitted to the budget on the engine thread


@dataclass
class Completion:
    text: str  # what to insert at the cursor ("" = nothing)
    raw: str  # the model's text after healing, before postprocess
    stats: Stats
    stop_reason: str
    typed_through: bool = False
    latency_ms: float = 0.0
    model: str = ""
    backend: str = "inprocess"  # the backend that computed it (or the suggestion it types through)

    def as_dict(self) -> dict[str, object]:
        d = self.stats.as_dict()
        d.update(text=self.text, raw=self.raw, stop_reason=self.stop_reason, typed_through=self.typed_through,
                 latency_ms=round(self.latency_ms, 1), model=self.model,
                 backend=self.backend)
        return d


@dataclass
class _Shown:
    """The last suggestion for a document, to serve typed-through keystrokes."""

    before: str  # document text up to the cursor
    after: str  # document text after the cursor
    text: str  # the suggestion shown


class Completer:
    """Text in, text out, over a `Backend` (backends/): the engine in this process, the
    shared engine daemon, or a remote server. `engine` is set only in the first case."""

    def __init__(self, tokenizer: object, backend: Backend, name: str, layout: str = "", heal: bool = True,
                 built: inprocess.Built | None = None) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.name = name  # the model, as Completion.model reports it
        self.built = built
        self.prompter = Prompter(tokenizer, layout=layout, heal=heal)
        self._newlines: frozenset[int] | None = None
        self._shown: dict[str, _Shown] = {}
        self._head: tuple[str, ...] = ()  # the extras of the last prompt built (select_extras' head)

    @property
    def engine(self):
        """The in-process engine (benchmarks reach into it); None over another backend."""
        return self.built.engine if self.built is not None else None

    @property
    def target(self):
        """The loaded target model in-process; None over another backend."""
        return self.built.target if self.built is not None else None

    @classmethod
    def from_settings(cls, settings: Settings, layout: str = "", heal: bool = True) -> "Completer":
        opened = open_backend(settings)
        return cls(opened.tokenizer, opened.backend, opened.name, layout, heal, opened.built)

    def apply(self, settings: Settings) -> None:
        """Settings that take effect without reloading the model (in-process only: the
        daemon takes them when it starts, a remote server has its own)."""
        if self.built is not None:
            inprocess.set_retrieval(self.built, settings.retrieval)
            self.built.engine.cache.resize(settings.cache_mb << 20)

    def newline_ids(self) -> frozenset[int]:
        if self._newlines is None:
            self._newlines = self.prompter.newline_ids()
        return self._newlines

    def typed_through(self, snap: Snapshot) -> str | None:
        """The rest of the last suggestion if the user typed its first characters (or nothing
        since: the same cursor asked again), else None."""
        shown = self._shown.get(snap.uri)
        if shown is None:
            return None
        before, after = snap.text[: snap.offset], snap.text[snap.offset :]
        if after != shown.after or not before.startswith(shown.before):
            return None
        typed = before[len(shown.before) :]
        if not shown.text.startswith(typed) or len(typed) >= len(shown.text):
            return None
        return shown.text[len(typed) :]

    def instant(self, snap: Snapshot) -> Completion | None:
        """Answer without the model when the user is typing through the last suggestion.

        Cheap and thread-safe enough to call from the event loop (dict reads, string compares)."""
        t0 = time.perf_counter()
        rest = self.typed_through(snap)
        if rest is None:
            return None
        self._remember(snap, rest)
        return Completion(rest, rest, Stats(drafter="typed-through"), "typed-through", True,
                          (time.perf_counter() - t0) * 1e3, self.name, self.backend.name)

    def complete(self, snap: Snapshot, settings: Settings, stop: threading.Event | None = None,
                 instant: bool = True) -> Completion:
        """The full pipeline. With `instant`, a typed-through keystroke is answered from memory;
        otherwise the remembered suggestion is handed to the engine's suggestion drafter."""
        if instant and (fast := self.instant(snap)) is not None:
            return fast
        t0 = time.perf_counter()
        rest = self.typed_through(snap)
        prompt, prefix, suffix = self._prompt(snap, settings)
        line_start = max(prefix.rfind("\n"), prefix.rfind("\r")) + 1
        line_prefix = prefix[line_start:]
        line_rest = suffix.split("\n", 1)[0]
        single = single_line_wanted(line_rest, settings.single_line)
        expected = None
        if rest is not None:  # hand the remembered suggestion to the suggestion drafter
            expected = self.prompter.encode(prompt.healed + rest)
        req = GenerateRequest(
            prompt=prompt.ids,
            max_tokens=settings.max_tokens + len(self.prompter.encode(prompt.healed)),
            stop_ids=prompt.stop_ids,
            newline_ids=self.newline_ids() if single else frozenset(),
            drafter=settings.drafter,
            suggestion=expected,
            temperature=settings.temperature,
            top_p=settings.top_p,
            budget_s=settings.time_budget_ms / 1e3,
            ceiling_s=settings.time_budget_ms * CEILING_FACTOR / 1e3,
            line_end_ids=self.newline_ids(),
            stop_event=stop,
            constraint=self.prompter.heal_constraint(prompt.healed),
            stop_after=self._block_end(prompt.healed, line_prefix, suffix) if settings.stop_at_block_end and not single else None,
            draft_group=snap.language,
            retrieval=snap.language in corpus.LANGUAGES and settings.retrieval != "none",
            cuts=prompt.cuts,
        )
        if settings.log_prompts:
            log.debug("prompt for %s: %r", snap.uri, self.prompter.decode(prompt.ids))
        res = self.backend.generate(req)
        raw = self.prompter.decode(res.tokens)
        raw = raw[len(prompt.healed) :] if raw.startswith(prompt.healed) else ""
        faults.hit("postprocess")
        text = postprocess(raw, line_prefix, suffix, single, truncated=res.stop_reason == "max_tokens",
                           timed_out=res.stop_reason in ("budget", "time"))
        if res.stop_reason != "cancelled":
            self._remember(snap, text)
        return Completion(text, raw, res.stats, res.stop_reason, False, (time.perf_counter() - t0) * 1e3, self.name, self.backend.name)

    def warm(self, snap: Snapshot, settings: Settings, stop: threading.Event | None = None) -> Stats:
        """Prefill the prompt that a request at `snap`'s cursor would build, so that the
        request (or the next keystroke there, which only extends it) reuses its KV."""
        prompt, _, _ = self._prompt(snap, settings)
        return self.backend.warm(prompt.ids, stop, prompt.cuts)

    def _prompt(self, snap: Snapshot, settings: Settings):
        """The prompt at the cursor, with the prefix and suffix windows it was built from."""
        prefix, suffix = windows(snap.text, snap.offset, self.prompter.count, settings.prefix_tokens, settings.suffix_tokens)
        # Engine thread only: warm-ups and requests share one head, in order.
        extras = select_extras(snap.chunks, self.prompter.count, settings.extra_tokens, snap.text, self._head)
        self._head = tuple(text for _, text in extras)
        return self.prompter.build(prefix, suffix, extras, snap.path), prefix, suffix

    def _block_end(self, healed: str, line_prefix: str, suffix: str):
        """Stop multi-line decoding once the text leaves its block: postprocess would cut the rest."""
        def ended(out) -> bool:  # a decode of <= maxTokens ids: microseconds next to a forward
            return block_ended(self.prompter.decode(out)[len(healed):], line_prefix, suffix)
        return ended

    def _remember(self, snap: Snapshot, text: str) -> None:
        if text:
            self._shown[snap.uri] = _Shown(snap.text[: snap.offset], snap.text[snap.offset :], text)
        else:
            self._shown.pop(snap.uri, None)

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)
