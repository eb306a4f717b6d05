"""FIM prompt templates, family detection and token healing.

Layout (measured, see ARCHITECTURE.md): what is stable comes first, the text
at the cursor comes last, so a keystroke only *extends* the cached tokens:

    [extra chunks from other files] [suffix] [prefix up to a clean token boundary]

Token healing: an editor's prefix usually ends mid-token (after auto-indent, in
a partial identifier). We cut that tail off the prompt and make the model
regenerate it: the first generated tokens are constrained to spell the cut text,
which is then stripped from the answer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ModelError


@dataclass(frozen=True)
class FimTemplate:
    family: str
    pre: str | None  # special token texts; None for emulated FIM (no FIM tokens)
    suf: str | None
    mid: str | None
    file_sep: str | None = None
    # "spm": <pre><suf>suffix<mid>prefix     (prefix last: keystrokes extend the cache)
    # "psm": <pre>prefix<suf>suffix<mid>     (for families trained only on PSM)
    layout: str = "spm"
    stops: tuple[str, ...] = ()


TEMPLATES: dict[str, FimTemplate] = {
    "qwen2.5-coder": FimTemplate(
        "qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>", "spm",
        ("<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ),
    "codegemma": FimTemplate(
        "codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>", "psm",
        ("<eos>", "<|file_separator|>", "<end_of_turn>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ),
    "starcoder2": FimTemplate(
        "starcoder2", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "psm",
        ("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>"),
    ),
    "deepseek-coder": FimTemplate(
        "deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", None, "psm",
        ("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ),
    "codestral": FimTemplate(
        "codestral", "[PREFIX]", "[SUFFIX]", "[MIDDLE]", None, "spm", ("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"),
    ),
    "codellama": FimTemplate(
        "codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", None, "psm", ("</s>", "▁<EOT>", "▁<PRE>", "▁<SUF>", "▁<MID>"),
    ),
    "emulated": FimTemplate("emulated", None, None, None, None, "spm", ("<eos>", "<end_of_turn>", "</s>", "<|endoftext|>")),
}


def detect_family(vocab: dict[str, int]) -> str:
    """Name the FIM family from the tokenizer's own special tokens."""
    if "<|fim_prefix|>" in vocab:
        return "codegemma" if "<|file_separator|>" in vocab else "qwen2.5-coder"
    if "<fim_prefix>" in vocab:
        return "starcoder2"
    if "<｜fim▁begin｜>" in vocab:
        return "deepseek-coder"
    if "[SUFFIX]" in vocab and "[PREFIX]" in vocab:
        return "codestral"
    if "▁<PRE>" in vocab:
        return "codellama"
    return "emulated"


# The tail an editor leaves mid-token: trailing blanks and a partial identifier on the cursor line.
_HEAL_RE = re.compile(r"[ \t]*[A-Za-z0-9_]*\Z")


def heal_cut(prefix: str, max_chars: int = 48) -> int:
    """How many trailing characters of `prefix` to cut back to a clean token boundary."""
    m = _HEAL_RE.search(prefix[-max_chars:] if len(prefix) > max_chars else prefix)
    return len(m.group(0)) if m else 0


@dataclass
class Prompt:
    ids: list[int]
    healed: str  # text cut off the prefix; the completion must start with it
    stop_ids: frozenset[int]
    cuts: tuple[int, ...] = ()  # where each extra chunk begins, then where the rest does (GenerateRequest.cuts)


@dataclass
class Prompter:
    """Turns (prefix, suffix, extra chunks) into token ids for one tokenizer."""

    tokenizer: object
    family: str = ""
    layout: str = ""  # "" = the family's measured default; "spm" or "psm" to compare layouts
    heal: bool = True  # token healing (off only to measure what it is worth)
    _texts: list[str] | None = field(default=None, repr=False)
    _by_first: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        vocab = self.tokenizer.get_vocab()
        self.family = self.family or detect_family(vocab)
        if self.family not in TEMPLATES:
            raise ModelError(f"unknown FIM family {self.family!r}; choose one of {', '.join(TEMPLATES)}")
        self.template = TEMPLATES[self.family]
        if self.layout:
            if self.layout not in ("spm", "psm"):
                raise ModelError(f"unknown layout {self.layout!r}; choose spm or psm")
            self.template = dataclasses.replace(self.template, layout=self.layout)
        self.vocab_size = max(len(self.tokenizer), max(vocab.values()) + 1)
        t = self.template
        for name in (t.pre, t.suf, t.mid):
            if name is not None and name not in vocab:
                raise ModelError(f"tokenizer lacks FIM token {name!r} of family {self.family}")
        self._special = {s: vocab[s] for s in (t.pre, t.suf, t.mid, t.file_sep) if s is not None and s in vocab}
        stops = {vocab[s] for s in t.stops if s in vocab}
        if self.tokenizer.eos_token_id is not None:
            stops.add(int(self.tokenizer.eos_token_id))
        self.stop_ids = frozenset(stops)

    # --- text -> ids --------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _anchor(self) -> tuple[int, str, str]:
        """A plain token to decode after: SentencePiece decoders (CodeLlama, Mistral) strip the
        leading blank of the *first* piece, so a piece's own text is measured behind this one."""
        if getattr(self, "_anchor_cache", None) is None:
            aid = self.encode("a")[-1]
            atok = self.tokenizer.convert_ids_to_tokens(aid)
            self._anchor_cache = (
                aid, atok, self.tokenizer.decode([aid], skip_special_tokens=True),
            )
        return self._anchor_cache

    def decode(self, ids: Sequence[int]) -> str:
        aid, _, atext = self._anchor()
        out = self.tokenizer.decode([aid, *ids], skip_special_tokens=True)
        if out.startswith(atext):
            return out[len(atext) :]
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def build(self, prefix: str, suffix: str, extras: Sequence[tuple[str, str]] = (), path: str = "") -> Prompt:
        """Token ids of the FIM prompt. Each piece is encoded on its own, so pieces never merge
        across a boundary and an unchanged piece always yields the same ids (cache hits)."""
        cut = heal_cut(prefix) if self.heal else 0
        healed, prefix = prefix[len(prefix) - cut :], prefix[: len(prefix) - cut]
        t, sp = self.template, self._special
        ids: list[int] = []
        cuts: list[int] = []  # each extra chunk encoded alone, so a prompt cut at these is a prompt

        def chunks(fmt) -> None:
            for p, text in extras:
                cuts.append(len(ids))
                ids.extend(fmt(p, text))
            if extras:
                cuts.append(len(ids))

        if t.pre is None:  # emulated FIM: plain text that still ends with the prefix
            chunks(lambda p, text: self.encode(f"# File: {p}\n{text}\n\n"))
            if suffix.strip():
                ids += self.encode(f"# File: {path or 'current file'} (the code that follows the cursor)\n{suffix}\n\n")
            ids += self.encode(f"# File: {path or 'current file'}\n")
            ids += self.encode(prefix)
            return Prompt(ids, healed, self.stop_ids, tuple(cuts))
        if t.file_sep is not None and t.file_sep in sp:
            chunks(lambda p, text: [sp[t.file_sep]] + self.encode(f"{p}\n{text}\n"))
            if extras or path:
                ids += [sp[t.file_sep]] + self.encode(f"{path or 'current'}\n")
        else:
            chunks(lambda p, text: self.encode(f"// File: {p}\n{text}\n"))
        if t.layout == "spm":
            if self.family == "codestral":  # [SUFFIX]suffix[PREFIX]prefix
                ids += [sp[t.suf]] + self.encode(suffix) + [sp[t.pre]] + self.encode(prefix)
            else:
                ids += [sp[t.pre], sp[t.suf]] + self.encode(suffix) + [sp[t.mid]] + self.encode(prefix)
        else:
            ids += [sp[t.pre]] + self.encode(prefix) + [sp[t.suf]] + self.encode(suffix) + [sp[t.mid]]
        return Prompt(ids, healed, self.stop_ids, tuple(cuts))

    # --- token healing --------------------------------------------------------------

    def token_texts(self) -> list[str]:
        if self._texts is None:
            conv = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            _, atok, _ = self._anchor()
            atext = self.tokenizer.convert_tokens_to_string([atok])
            texts = []
            for tok in conv:
                s = self.tokenizer.convert_tokens_to_string([atok, tok]) if tok is not None else ""
                s = s[len(atext) :] if s.startswith(atext) else self.tokenizer.convert_tokens_to_string([tok])
                texts.append("" if "\ufffd" in s else s)
            texts += [""] * (self.vocab_size - len(texts))
            for s in self._special:
                texts[self._special[s]] = ""
            for i in self.stop_ids:
                if i < len(texts):
                    texts[i] = ""
            self._texts = texts
            for i, s in enumerate(texts):
                if s:
                    self._by_first.setdefault(s[0], []).append(i)
        return self._texts

    def heal_constraint(self, healed: str):
        """A constraint for the engine: while the generated text has not yet spelled `healed`,
        allow only tokens that continue it (a prefix of the rest, or the rest plus more)."""
        if not healed:
            return None
        texts = self.token_texts()
        size = self.vocab_size
        masks: dict[str, torch.Tensor] = {}
        spelled_at: list[int] = []  # len(out) once the healed text is spelled: no more work

        def allowed(out: Sequence[int]) -> torch.Tensor | None:
            if spelled_at and len(out) >= spelled_at[0]:
                return None
            done = self.decode(out)
            if len(done) >= len(healed):
                spelled_at.append(len(out))
                return None
            rest = healed[len(done) :]
            if rest not in masks:
                idx = [i for i in self._by_first.get(rest[0], ()) if rest.startswith(texts[i]) or texts[i].startswith(rest)]
                mask = torch.zeros(size, dtype=torch.bool)
                mask[idx] = True
                masks[rest] = mask
            return masks[rest]

        return allowed

    def newline_ids(self) -> frozenset[int]:
        return frozenset(i for i, s in enumerate(self.token_texts()) if "\n" in s or "\r" in s)
