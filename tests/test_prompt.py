"""prompt: family detection, token healing, and the Prompter on the real Qwen2.5-Coder tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma_lsp.complete.prompt import TEMPLATES, Prompter, detect_family, heal_cut

# --- detect_family ------------------------------------------------------------------------------

BASE = {"a": 0, "b": 1, "<eos>": 2, "</s>": 3}


def vocab(*special: str) -> dict[str, int]:
    v = dict(BASE)
    for s in special:
        v[s] = len(v)
    return v


@pytest.mark.parametrize(
    "specials, family",
    [
        (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>", "<|endoftext|>"), "qwen2.5-coder"),
        (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"), "codegemma"),
        (("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"), "starcoder2"),
        (("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), "deepseek-coder"),
        (("[PREFIX]", "[SUFFIX]", "[MIDDLE]"), "codestral"),
        (("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"), "codellama"),
        (("<start_of_turn>", "<end_of_turn>"), "emulated"),
        ((), "emulated"),
        (("[SUFFIX]",), "emulated"),  # half a template is not codestral
    ],
)
def test_detect_family(specials, family):
    assert detect_family(vocab(*specials)) == family


def test_every_template_detects_as_itself():
    for name, t in TEMPLATES.items():
        specials = [s for s in (t.pre, t.suf, t.mid, t.file_sep) if s]
        assert detect_family(vocab(*specials)) == name


# --- heal_cut -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, cut",
    [
        ("def f():\n    ", 4),  # auto-indent after a newline
        ("def f():\n    ret", 7),  # indentation and a partial identifier
        ("x = foo.", 0),
        ("a +", 0),
        ("return x ", 1),  # only the trailing blank: "x" is followed by it, so it is not the tail
        ("    return x", 2),  # " x": the blank before the partial identifier goes with it
        ("obj.attr", 4),
        ("print(", 0),
        ("x = 1\n", 0),
        ("", 0),
        ("\t\tname", 6),
        ("abc", 3),
    ],
)
def test_heal_cut(prefix, cut):
    assert heal_cut(prefix) == cut


def test_heal_cut_is_bounded():
    assert heal_cut("x" * 500) == 48
    assert heal_cut(" " * 100, max_chars=10) == 10


# --- Prompter on the real Qwen tokenizer -------------------------------------------------------------


def _qwen_dir() -> Path | None:
    candidates = []
    if os.environ.get("GEMMA_LSP_CACHE"):
        candidates.append(Path(os.environ["GEMMA_LSP_CACHE"]) / "models" / "qwen2.5-coder-1.5b-instruct-bf16")
    try:
        from gemma_lsp.models.default import prepared_dir

        candidates.append(prepared_dir())
    except Exception:  # noqa: BLE001 - only a location hint
        pass
    candidates.append(Path("/work/cache/models/qwen2.5-coder-1.5b-instruct-bf16"))
    for c in candidates:
        if (c / "tokenizer.json").is_file():
            return c
    return None


@pytest.fixture(scope="module")
def tok():
    path = _qwen_dir()
    if path is None:
        pytest.skip("Qwen2.5-Coder tokenizer not prepared (run `gemma-lsp` model preparation or set GEMMA_LSP_CACHE)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def qwen(tok):
    return Prompter(tok)


def special(tok, s: str) -> int:
    return tok.convert_tokens_to_ids(s)


PREFIX = "import math\n\n\ndef area(r):\n    ret"
SUFFIX = "\n\n\ndef main():\n    print(area(2))\n"


def test_family_and_stops(qwen, tok):
    assert qwen.family == "qwen2.5-coder"
    for s in ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>", "<|fim_middle|>"):
        assert special(tok, s) in qwen.stop_ids, s


def test_build_spm_layout_ends_with_healed_prefix(qwen, tok):
    p = qwen.build(PREFIX, SUFFIX)
    assert p.healed == "    ret"
    pre, suf, mid = (special(tok, s) for s in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    assert p.ids.count(pre) == p.ids.count(suf) == p.ids.count(mid) == 1
    assert p.ids.index(pre) < p.ids.index(suf) < p.ids.index(mid)
    head = tok.encode(PREFIX[: -len("    ret")], add_special_tokens=False)
    assert p.ids[-len(head) :] == head
    assert p.ids[p.ids.index(mid) + 1 :] == head  # SPM: the prefix comes last, right after <|fim_middle|>
    assert p.ids[p.ids.index(suf) + 1 : p.ids.index(mid)] == tok.encode(SUFFIX, add_special_tokens=False)
    assert p.stop_ids == qwen.stop_ids


def test_build_with_extras_uses_file_sep(qwen, tok):
    p = qwen.build(PREFIX, SUFFIX, [("/p/util.py", "PI = 3.14\n")], "/p/main.py")
    sep = special(tok, "<|file_sep|>")
    assert p.ids[0] == sep and p.ids.count(sep) == 2
    text = tok.decode(p.ids)
    assert text.startswith("<|file_sep|>/p/util.py\nPI = 3.14\n\n<|file_sep|>/p/main.py\n<|fim_prefix|><|fim_suffix|>")


def test_typing_extends_the_prompt(qwen):
    """Each keystroke at the cursor must keep (nearly) all earlier ids: the prefix cache hits."""
    text = "import os\n\n\ndef walk(root):\n    "
    prev = qwen.build(text, SUFFIX).ids
    for ch in "for name in os.listdir(root):\n        print(name)\n    return None\n":
        text += ch
        ids = qwen.build(text, SUFFIX).ids
        common = 0
        for a, b in zip(prev, ids):
            if a != b:
                break
            common += 1
        assert common >= 0.9 * len(prev), f"after typing {text[-20:]!r}: only {common}/{len(prev)} ids shared"
        prev = ids


def test_heal_constraint_spells_the_cut_text(qwen, tok):
    texts = qwen.token_texts()
    c = qwen.heal_constraint("    ret")
    mask = c([])
    assert str(mask.dtype) == "torch.bool" and mask.shape[0] == qwen.vocab_size == len(tok)
    allowed = {texts[i] for i in mask.nonzero().flatten().tolist()}
    assert "    " in allowed and " " in allowed
    assert all("    ret".startswith(s) or s.startswith("    ret") for s in allowed)
    assert not mask[tok.encode("x", add_special_tokens=False)[0]]
    assert not mask[tok.encode(" return", add_special_tokens=False)[0]]  # one blank, not four
    # after "   " (3 blanks) the rest is " ret": " return" now continues it, "return" does not
    three = tok.encode("   ", add_special_tokens=False)
    assert len(three) == 1
    m2 = c(three)
    assert m2[tok.encode(" return", add_special_tokens=False)[0]]
    assert m2[tok.encode(" ret", add_special_tokens=False)[0]]
    assert not m2[tok.encode("return", add_special_tokens=False)[0]]
    assert not any(m2[i] for i in qwen.stop_ids)
    # spelled (or overshot): no constraint any more
    assert c(tok.encode("    ret", add_special_tokens=False)) is None
    assert c(tok.encode("    return", add_special_tokens=False)) is None
    assert qwen.heal_constraint("") is None


def test_emulated_template_ends_with_prefix(tok):
    em = Prompter(tok, family="emulated")
    assert em.family == "emulated"
    p = em.build("def add(a, b):\n    return a +", "\n\nprint(add(1, 2))\n", [("/p/x.py", "X = 1\n")], "/p/m.py")
    text = tok.decode(p.ids)
    assert text.endswith("def add(a, b):\n    return a +")
    assert "<|fim_prefix|>" not in text and "<|fim_middle|>" not in text
    assert text.index("X = 1") < text.index("print(add(1, 2))") < text.index("def add")
    assert p.healed == ""


def test_unknown_family_is_a_clear_error(tok):
    from gemma_lsp.errors import ModelError

    with pytest.raises(ModelError, match="unknown FIM family"):
        Prompter(tok, family="gpt-17")
    with pytest.raises(ModelError, match="lacks FIM token"):
        Prompter(tok, family="starcoder2")


# --- SentencePiece-style decoders (CodeLlama, Mistral): the first piece's blank must survive ---------


def _tiny_codellama():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    v = {"<unk>": 0, "</s>": 1, "▁<PRE>": 2, "▁<SUF>": 3, "▁<MID>": 4, "▁<EOT>": 5, "▁ret": 6, "▁return": 7,
         "▁": 8, "▁▁▁": 9, "r": 10, "e": 11, "t": 12, "x": 13, "▁a": 14, "a": 15}
    t = Tokenizer(models.BPE(v, [], unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    # Llama's decoder: "▁" -> " ", then strip ONE leading blank of the whole text
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_piece_texts_keep_leading_blank():
    p = Prompter(_tiny_codellama())
    assert p.family == "codellama"
    texts = p.token_texts()
    assert texts[6] == " ret" and texts[9] == "   " and texts[8] == " "
    assert p.decode([9, 6]) == "    ret"  # not "   ret": the completer strips `healed` from this
    c = p.heal_constraint("    ret")
    assert {i for i in c([]).nonzero().flatten().tolist()} == {8, 9}
    assert {i for i in c([9]).nonzero().flatten().tolist()} == {6, 7, 8}  # " ret", " return", " "
    assert c([9, 6]) is None
