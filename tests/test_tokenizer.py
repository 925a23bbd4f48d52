"""The tokenizer: llama.cpp's test vectors for every vocabulary in ../shared/testdata/vocab,
every pre-tokenizer against its regexes run by the `regex` package, round trips of random
UTF-8, the streaming detokenizer, special-token parsing, malformed metadata, the C API through
cffi, speed on long texts, SmolLM2's vocabulary and stories260K's golden greedy text."""
import os
import pathlib
import random
import shutil
import subprocess
import sys
import time
import unicodedata
import warnings

import numpy as np
import pytest

import pyfoundry as pf

from conftest import ROOT, SHARED, TESTDATA, shared_file

VOCAB_DIR = TESTDATA / "vocab"
VOCABS = sorted(p.name for p in VOCAB_DIR.glob("*.gguf")) if VOCAB_DIR.is_dir() else []


def vocab_params():
    return VOCABS or [pytest.param(None, marks=pytest.mark.skip(
        reason="../shared/testdata/vocab not available"))]


_TOKENIZERS = {}


def vocab_tokenizer(name):
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = pf.Tokenizer(VOCAB_DIR / name)
    return _TOKENIZERS[name]


def vocab_cases(name):
    """(text, expected ids) pairs of llama.cpp's .inp/.out files."""
    base = VOCAB_DIR / name
    inp = (base.parent / (base.name + ".inp")).read_text(encoding="utf-8")
    out = (base.parent / (base.name + ".out")).read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    assert texts[-1] == ""
    texts = texts[:-1]
    lines = out.split("\n")[:len(texts)]
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


# ---- llama.cpp's vectors ------------------------------------------------------------------

@pytest.mark.parametrize("vocab", vocab_params())
def test_vocab_vectors_match_llama_cpp_exactly(vocab):
    tok = vocab_tokenizer(vocab)
    cases = vocab_cases(vocab)
    assert len(cases) == 46
    bad = [(text, want, got) for text, want in cases
           if (got := tok.encode(text, add_special=False, parse_special=False)) != want]
    assert not bad, "\n".join(f"{t!r}: want {w} got {g}" for t, w, g in bad[:5])


@pytest.mark.parametrize("vocab", vocab_params())
def test_vocab_vectors_decode_back_to_their_text(vocab):
    tok = vocab_tokenizer(vocab)
    for text, ids in vocab_cases(vocab):
        assert tok.decode(ids) == text


# ---- pre-tokenizers against their regexes ------------------------------------------------------
# llama.cpp applies a list of regexes in turn, each to every piece of the last; what lies between
# two matches is a piece too.  \s is White_Space (std::regex with llama.cpp's replacements); the
# regexes without \p{..} see non-ASCII white space as U+000B.

WS = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
WS_SET = {c for c in map(chr, range(0x3001)) if c.isspace()} - set("\x1c\x1d\x1e\x1f")


def _rx(s):
    return s.replace("[^\\s", "[^" + WS).replace("\\s", f"[{WS}]").replace("\\S", f"[^{WS}]")


GPT2_RX = _rx(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
LLAMA3_RX = _rx(r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?"
                r"\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CJK_RX = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"


def _ds_letters():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_unicode_tables
    finally:
        sys.path.pop(0)
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in gen_unicode_tables.DEEPSEEK_LETTERS)


PRE_REGEXES = {
    "gpt-2": [GPT2_RX],
    "llama-bpe": [LLAMA3_RX],
    "qwen2": [LLAMA3_RX.replace(r"\p{N}{1,3}", r"\p{N}")],
    "smollm": [r"\p{N}", GPT2_RX],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", GPT2_RX, "[0-9][0-9][0-9]"],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2_RX, r"\p{N}+", "[0-9][0-9][0-9]"],
    "deepseek-coder": ["[\r\n]", _rx(r"\s?\p{L}+"), _rx(r"\s?\p{P}+"), CJK_RX, r"\p{N}"],
    "deepseek-llm": ["[\r\n]", None, _rx("\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f"
                                         "\u3000-\u3002]+"), _rx(r"\s+\Z"), CJK_RX, r"\p{N}+"],
}
PRE_RULES = {"gpt-2": "gpt2", "llama-bpe": "llama3", "qwen2": "qwen2", "smollm": "starcoder",
             "falcon": "falcon", "default": "default", "deepseek-coder": "deepseek-coder",
             "deepseek-llm": "deepseek-llm", "mpt": "gpt2", "starcoder": "starcoder",
             "refact": "starcoder", "llama3": "llama3", "deepseek-r1-qwen": "qwen2"}


def reference_split(text, regexes):
    regex = pytest.importorskip("regex")
    pieces = [text]
    for rx in regexes:
        plain = "\\p{" not in rx
        out = []
        for piece in pieces:
            subject = ("".join("\x0b" if c in WS_SET and c > "\x7f" else c for c in piece)
                       if plain else piece)
            pos = 0
            for m in regex.finditer(rx, subject):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                out.append(piece[m.start():m.end()])
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def tiny_bpe_file(path, pre="gpt-2", extra_tokens=(), extra_types=(), **md):
    """A byte-level BPE vocabulary: the 256 byte characters, a few merges, extra tokens."""
    mapping, n = {}, 0
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + n)
            n += 1
    tokens = [mapping[b] for b in range(256)] + ["he", "ll", "hell", "hello", "\u0120w"]
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 w"]
    tokens += list(extra_tokens)
    types = [1] * (len(tokens) - len(extra_tokens)) + list(extra_types or [1] * len(extra_tokens))
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
    if pre is not None:
        meta["tokenizer.ggml.pre"] = pre
    md = {"tokenizer.ggml.bos_token_id": 0, **md}  # Llama 3 vocabularies add BOS by default
    meta.update(md)
    types_ = {"tokenizer.ggml.token_type": "array[int32]"}
    types_.update({k: "uint32" for k in md if k.endswith("_id")})
    pf.write_gguf(path, metadata=meta, types=types_)
    return path


def random_text(rng, n, spm=False):
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789", " ", "  ", "\n", "\r\n", "\t", " \n ",
        "'s'S'RE've'll'd'M'T",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "äöüßéèêçñøåÆŒ½²³€£¥©®",
        "нещоБългарскиΑλφαβητοשלוםمرحبا",
        "我想在工作天你好世界日本語한국어カタカナひらがな",
        "😀🦙🚀😶\u200d🌫️✅👍🏽🇫🇷",
        "e\u0301a\u0308\u0915\u094d\u0937\u0e01\u0e34",
        "\x00\x01\x07\x0b\x0c\x1b\x7f\x85",
        "\u00a0\u2003\u3000\u2028\u202f\u200b\ufeff",
        "\uff01\uff1a\uff5e\u2018\u201c\u3001\u3002",
        "\U0001d400\U0001f600\U00010400\U0001e900",
        "<s></s><|endoftext|><unk>[PAD]",
    ]
    out = []
    while len(out) < n:
        pool = rng.choice(pools)
        k = rng.randint(1, 6)
        out.append("".join(rng.choice(pool) for _ in range(k)) if rng.random() < 0.7 else pool)
    s = "".join(out)[:n]
    if spm:
        s = s.replace("\u2581", "_")
    return s


def assigned(s):
    return "".join(c for c in s if unicodedata.category(c) != "Cn")


@pytest.mark.parametrize("pre", sorted(PRE_REGEXES))
def test_pre_tokenizer_matches_its_regexes(tmp_path, pre):
    tok = pf.Tokenizer(tiny_bpe_file(tmp_path / "v.gguf", pre=pre))
    assert tok.pre == PRE_RULES[pre]
    regexes = list(PRE_REGEXES[pre])
    if None in regexes:
        regexes[regexes.index(None)] = _rx(f"\\s?[{_ds_letters()}]+")
    rng = random.Random(sum(map(ord, pre)))  # str hashes vary between runs
    texts = [c[0] for v in VOCABS for c in vocab_cases(v)]
    texts += [random_text(rng, rng.randint(1, 80)) for _ in range(400)]
    texts += ["", " ", "   ", "a  ", "  \n  x", "1234567", "\u3000\u3000x", "ab\u3000",
              "x \u00a0 y", "''s", "I'M HE'LL", "a\r\n\r\n b", "$$+<=>^~|`!!", "\t\t\n"]
    for text in texts:
        text = assigned(text)
        assert tok.pre_tokenize(text) == reference_split(text, regexes), repr(text)


@pytest.mark.parametrize("name,rules", sorted(PRE_RULES.items()))
def test_pre_tokenizer_names_select_rules(tmp_path, name, rules):
    assert pf.Tokenizer(tiny_bpe_file(tmp_path / "v.gguf", pre=name)).pre == rules


def test_unknown_pre_tokenizer_warns_and_uses_gpt2_rules(tmp_path):
    path = tiny_bpe_file(tmp_path / "v.gguf", pre="not-a-pre-tokenizer")
    with pytest.warns(UserWarning, match="unknown pre-tokenizer 'not-a-pre-tokenizer'"):
        tok = pf.Tokenizer(path)
    assert tok.pre == "gpt2" and tok.warnings
    assert tok.pre_tokenize("Hello  world 123") == ["Hello", " ", " world", " 123"]


def test_missing_pre_tokenizer_warns_and_uses_llama_cpp_default(tmp_path):
    with pytest.warns(UserWarning, match="tokenizer.ggml.pre is missing"):
        tok = pf.Tokenizer(tiny_bpe_file(tmp_path / "v.gguf", pre=None))
    assert tok.pre == "default"


def test_llama3_pre_tokenizer_takes_whole_word_tokens_and_adds_bos(tmp_path):
    path = tiny_bpe_file(tmp_path / "v.gguf", pre="llama-bpe", extra_tokens=["helloworld", "<b>"],
                         extra_types=[1, 3], **{"tokenizer.ggml.bos_token_id": 262})
    tok = pf.Tokenizer(path)
    assert tok.add_bos and tok.bos_id == 262
    # no merge makes "helloworld", but it is a whole word in the vocabulary
    assert tok.encode("helloworld", add_special=False) == [tok.token_to_id("helloworld")]
    assert tok.encode("hello")[0] == 262


# ---- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", vocab_params())
def test_random_utf8_round_trips(vocab):
    tok = vocab_tokenizer(vocab)
    spm = tok.model == "llama"
    rng = random.Random(1234)
    for _ in range(300):
        s = random_text(rng, rng.randint(0, 120), spm=spm)
        assert tok.decode(tok.encode(s, add_special=False)) == s
        assert tok.decode(tok.encode(s, add_special=True)) == s


@pytest.mark.parametrize("vocab", vocab_params())
def test_hypothesis_text_round_trips(vocab):
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    tok = vocab_tokenizer(vocab)

    @hyp.settings(max_examples=200, deadline=None, database=None)
    @hyp.given(st.text(max_size=60))
    def check(s):
        if tok.model == "llama":
            s = s.replace("\u2581", " ")
        assert tok.decode(tok.encode(s)) == s

    check()


def replace_each_invalid_byte(raw):
    """UTF-8 decoding where every byte that does not start a valid character is U+FFFD."""
    out, i = [], 0
    while i < len(raw):
        for k in (1, 2, 3, 4):
            try:
                out.append(raw[i:i + k].decode("utf-8"))
                i += k
                break
            except UnicodeDecodeError:
                pass
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


@pytest.mark.parametrize("vocab", vocab_params())
def test_invalid_utf8_is_kept_by_spm_and_replaced_per_byte_by_bpe(vocab):
    tok = vocab_tokenizer(vocab)
    rng = random.Random(7)
    samples = [b"a\xffb\xe2\x82", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))) for _ in range(200)]
    for raw in samples:
        ids = tok.encode(raw, add_special=False)
        if tok.model == "llama":  # byte fallback keeps every byte
            assert tok.decode_bytes(ids) == raw
        else:  # as llama.cpp, each invalid byte reads as U+FFFD
            assert tok.decode(ids) == replace_each_invalid_byte(raw)


def test_bpe_replaces_each_invalid_byte_like_llama_cpp():
    if "ggml-vocab-gpt-2.gguf" not in VOCABS:
        pytest.skip("gpt-2 vocab not available")
    tok = vocab_tokenizer("ggml-vocab-gpt-2.gguf")
    assert tok.encode(b"a\xff\xfeb", False) == tok.encode("a\ufffd\ufffdb", False)
    assert tok.encode(b"\xe2\x82", False) == tok.encode("\ufffd\ufffd", False)


def test_more_ids_than_bytes(tmp_path):
    # no merges for U+FFFD: each invalid byte is 3 ids (the binding's second, larger buffer)
    tok = pf.Tokenizer(tiny_bpe_file(tmp_path / "v.gguf"))
    ids = tok.encode(b"\xff" * 100, False)
    assert len(ids) == 300 and tok.decode(ids) == "\ufffd" * 100


# ---- streaming ----------------------------------------------------------------------------------

def stream_all(tok, ids, **kw):
    s = tok.stream(**kw)
    chunks = [s.push_bytes(i) for i in ids]
    return chunks, s.flush_bytes()


@pytest.mark.parametrize("vocab", vocab_params())
def test_stream_yields_decode_and_never_half_a_character(vocab):
    tok = vocab_tokenizer(vocab)
    rng = random.Random(99)
    for _ in range(100):
        s = random_text(rng, rng.randint(0, 100), spm=tok.model == "llama")
        ids = tok.encode(s)
        chunks, rest = stream_all(tok, ids)
        assert rest == b""
        for c in chunks:
            c.decode("utf-8")  # strict: every chunk is whole characters
        assert b"".join(chunks).decode() == tok.decode(ids) == s
        st = tok.stream()
        assert "".join(st.push(i) for i in ids) + st.flush() == s


@pytest.mark.parametrize("vocab", vocab_params())
def test_stream_of_arbitrary_ids_equals_decode(vocab):
    tok = vocab_tokenizer(vocab)
    rng = np.random.default_rng(5)
    for skip in (True, False):
        for _ in range(50):
            ids = rng.integers(0, tok.vocab_size, rng.integers(0, 40)).tolist()
            st = tok.stream(skip_special=skip)
            text = "".join(st.push(i) for i in ids) + st.flush()
            assert text == tok.decode(ids, skip_special=skip)


def test_stream_holds_back_a_character_split_across_byte_tokens():
    if "ggml-vocab-llama-spm.gguf" not in VOCABS:
        pytest.skip("llama-spm vocab not available")
    tok = vocab_tokenizer("ggml-vocab-llama-spm.gguf")
    ids = tok.encode("a🦙", add_special=False)
    byte_ids = [tok.token_to_id(f"<0x{b:02X}>") for b in "🦙".encode()]
    assert ids[-4:] == byte_ids  # the llama is not in the vocabulary: 4 byte tokens
    s = tok.stream()
    out = [s.push(i) for i in ids]
    assert out[-4:] == ["", "", "", "🦙"] and "".join(out) == "a🦙"
    s = tok.stream()
    assert [s.push(i) for i in byte_ids[:2]] == ["", ""]
    assert s.flush() == "\ufffd" and s.flush() == ""
    # BPE: the bytes of one character spread over several tokens
    if "ggml-vocab-gpt-2.gguf" in VOCABS:
        g = vocab_tokenizer("ggml-vocab-gpt-2.gguf")
        ids = g.encode("🦙🦙")
        s = g.stream()
        chunks = [s.push_bytes(i) for i in ids]
        assert len(ids) > 2 and b"".join(chunks) == "🦙🦙".encode()
        assert all(c in (b"", "🦙".encode(), "🦙🦙".encode()) for c in chunks)


def test_stream_start_false_keeps_the_leading_space():
    if "ggml-vocab-llama-spm.gguf" not in VOCABS:
        pytest.skip("llama-spm vocab not available")
    tok = vocab_tokenizer("ggml-vocab-llama-spm.gguf")
    ids = tok.encode("Hello world", add_special=False)
    assert tok.decode(ids) == "Hello world"
    assert tok.decode(ids, start=False) == " Hello world"
    s = tok.stream(start=False)
    assert "".join(s.push(i) for i in ids) == " Hello world"
    assert tok.token_to_piece(ids[0]) == b" Hello"


# ---- special tokens -----------------------------------------------------------------------------

def test_parse_special_on_and_off_spm():
    if "ggml-vocab-llama-spm.gguf" not in VOCABS:
        pytest.skip("llama-spm vocab not available")
    tok = vocab_tokenizer("ggml-vocab-llama-spm.gguf")
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.unk_id == 0 and tok.add_bos
    assert tok.encode("<s>", add_special=False, parse_special=True) == [1]
    plain = tok.encode("<s>", add_special=False, parse_special=False)
    assert 1 not in plain and tok.decode(plain) == "<s>"
    ids = tok.encode("<s>Hi</s>", add_special=True, parse_special=True)
    assert ids[:2] == [1, 1] and ids[-1] == 2
    assert tok.decode(ids) == "Hi"
    assert tok.decode(ids, skip_special=False) == "<s><s>Hi</s>"
    assert tok.token_to_piece(1) == b"" and tok.token_to_piece(1, special=True) == b"<s>"
    assert tok.token_to_piece(tok.token_to_id("<0x0A>")) == b"\n"
    assert tok.token_to_piece(tok.token_to_id("\u2581the")) == b" the"
    assert tok.encode("Hi", add_special=True) == [1] + tok.encode("Hi", add_special=False)


def test_parse_special_on_and_off_bpe():
    if "ggml-vocab-gpt-2.gguf" not in VOCABS:
        pytest.skip("gpt-2 vocab not available")
    tok = vocab_tokenizer("ggml-vocab-gpt-2.gguf")
    eot = tok.token_to_id("<|endoftext|>")
    assert eot == 50256 and eot in tok.eot_ids and not tok.add_bos
    assert tok.encode("a<|endoftext|>b", parse_special=True) == [64, eot, 65]
    plain = tok.encode("a<|endoftext|>b")
    assert eot not in plain and tok.decode(plain) == "a<|endoftext|>b"
    assert tok.decode([64, eot, 65]) == "ab"
    assert tok.decode([64, eot, 65], skip_special=False) == "a<|endoftext|>b"
    assert tok.token_to_piece(tok.token_to_id("\u0120the")) == b" the"


def test_user_defined_tokens_are_always_cut_out():
    if "ggml-vocab-deepseek-coder.gguf" not in VOCABS:
        pytest.skip("deepseek-coder vocab not available")
    tok = vocab_tokenizer("ggml-vocab-deepseek-coder.gguf")
    u = tok.token_to_id("\u00fc")
    assert tok.is_special(u)
    ids = tok.encode("Führer", add_special=False)
    assert u in ids and tok.decode(ids) == "Führer"
    bos = tok.token_to_id("<\uff5cbegin\u2581of\u2581sentence\uff5c>")
    assert tok.bos_id == bos and tok.add_bos
    assert tok.encode("<\uff5cbegin\u2581of\u2581sentence\uff5c>x", parse_special=True) == \
        [bos, bos] + tok.encode("x", add_special=False)


def test_special_tokens_longest_first(tmp_path):
    path = tiny_bpe_file(tmp_path / "v.gguf", extra_tokens=["<a>", "<a><b>", "b>"],
                         extra_types=[3, 3, 4])
    tok = pf.Tokenizer(path)
    a, ab, b = (tok.token_to_id(x) for x in ("<a>", "<a><b>", "b>"))
    assert tok.encode("<a><b>", parse_special=True) == [ab]
    assert tok.encode("x<a>y<a><b>", parse_special=True)[-1] == ab
    # without parse_special only the user-defined "b>" is cut out
    ids = tok.encode("<a><b>", parse_special=False)
    assert ids[-1] == b and a not in ids and ab not in ids


# ---- the tokenizer object -------------------------------------------------------------------------

def test_gguf_file_and_model_expose_the_tokenizer(stories_path):
    f = pf.open(stories_path)
    tok = f.tokenizer
    assert tok is f.tokenizer and isinstance(tok, pf.Tokenizer)
    assert tok.vocab_size == len(tok) == 512 and tok.model == "llama" and tok.pre is None
    assert tok.id_to_token(1) == "<s>" and tok.token_to_id("<s>") == 1
    assert tok.token_to_id("no such token") is None
    m = pf.Model(f)
    assert m.tokenizer is tok
    f.close()
    with pytest.raises(pf.FoundryStateError):
        f.tokenizer
    assert tok.decode(tok.encode("Once upon a time")) == "Once upon a time"
    with pytest.raises(IndexError):
        tok.decode([512])
    with pytest.raises(IndexError):
        tok.token_to_piece(-1)
    with pytest.raises(TypeError):
        tok.encode(3)
    assert "SPM" in repr(tok)


def test_stories260k_greedy_200_golden_text_through_the_tokenizer(stories_path):
    golden = shared_file("stories260K.greedy200.txt").read_bytes()
    model = pf.Model(stories_path)
    tok = model.tokenizer
    ids, cur = [], tok.bos_id
    for pos in range(200):
        nxt = int(np.argmax(model.forward([cur], pos, logits="last")))
        if nxt == tok.bos_id:
            break
        ids.append(nxt)
        cur = nxt
    assert tok.decode_bytes(ids) == golden
    assert tok.decode(ids) == golden.decode("utf-8", "replace")
    s = tok.stream()
    assert "".join(s.push(i) for i in ids) + s.flush() == golden.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def smollm2():
    script = SHARED / "tools" / "fetch-model.sh"
    if not script.exists():
        pytest.skip("fetch-model.sh not available")
    try:
        r = subprocess.run(["bash", str(script), "smollm2"], capture_output=True, text=True,
                           timeout=900)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("SmolLM2 could not be fetched")
    if r.returncode != 0 or not r.stdout.strip():
        pytest.skip("SmolLM2 could not be fetched")
    return pathlib.Path(r.stdout.strip().splitlines()[-1])


def test_smollm2_vocabulary_loads_and_round_trips(smollm2):
    tok = pf.open(smollm2).tokenizer
    assert tok.model == "gpt2" and tok.pre == "starcoder" and tok.vocab_size == 49152
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert tok.eos_id == im_end and tok.eot_id == im_end
    assert {im_end, tok.token_to_id("<|endoftext|>")} <= tok.eot_ids
    assert not tok.add_bos and tok.encode("hi") == tok.encode("hi", add_special=False)
    assert tok.pre_tokenize("year 2024!") == ["year", " ", "2", "0", "2", "4", "!"]
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    ids = tok.encode(chat, parse_special=True)
    assert ids[0] == im_start and im_end in ids
    assert tok.decode(ids, skip_special=False) == chat
    assert tok.decode(ids) == "user\nWhat is 2+2?\n"
    rng = random.Random(3)
    for _ in range(200):
        s = random_text(rng, rng.randint(0, 100))
        assert tok.decode(tok.encode(s)) == s


# ---- malformed metadata ---------------------------------------------------------------------------

SPM_TOKENS = ["<unk>", "<s>", "</s>", "\u2581a", "a", "b"]


def spm_meta(**changes):
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": list(SPM_TOKENS),
          "tokenizer.ggml.scores": [0.0] * 6, "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1]}
    md.update(changes)
    return {k: v for k, v in md.items() if v is not None}


def write(tmp_path, md, types=None):
    path = tmp_path / "bad.gguf"
    t = {"tokenizer.ggml.token_type": "array[int32]"} if isinstance(
        md.get("tokenizer.ggml.token_type"), list) else {}
    t.update(types or {})
    pf.write_gguf(path, metadata=md, types=t)
    return path


BAD_SPM = {
    "no tokens": dict(**{"tokenizer.ggml.tokens": None}),
    "tokens not strings": {"tokenizer.ggml.tokens": [1, 2, 3, 4, 5, 6]},
    "empty vocabulary": {"tokenizer.ggml.tokens": [], "tokenizer.ggml.scores": [],
                         "tokenizer.ggml.token_type": []},
    "scores too short": {"tokenizer.ggml.scores": [0.0] * 5},
    "scores not numbers": {"tokenizer.ggml.scores": ["x"] * 6},
    "types too long": {"tokenizer.ggml.token_type": [1] * 7},
    "duplicate token": {"tokenizer.ggml.tokens": SPM_TOKENS[:5] + ["a"]},
    "invalid UTF-8 token": {"tokenizer.ggml.tokens": SPM_TOKENS[:5] + [b"\xff\xfe"]},
    "byte type without <0xXX>": {"tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 6]},
    "bos id is a string": {"tokenizer.ggml.bos_token_id": "1"},
    "model not a string": {"tokenizer.ggml.model": 3},
}


@pytest.mark.parametrize("what", sorted(BAD_SPM))
def test_malformed_spm_metadata_raises_gguf_error(tmp_path, what):
    path = write(tmp_path, spm_meta(**BAD_SPM[what]))
    with pytest.raises(pf.GGUFError) as e:
        pf.Tokenizer(path)
    assert isinstance(e.value, ValueError) and "tokenizer" in str(e.value)


BAD_BPE = {
    "no merges": {"tokenizer.ggml.merges": None},
    "merge without a space": {"tokenizer.ggml.merges": ["he"]},
    "merge of an unknown token": {"tokenizer.ggml.merges": ["h zz"]},
    "merge making an unknown token": {"tokenizer.ggml.merges": ["x y"]},
    "merges not strings": {"tokenizer.ggml.merges": [1, 2]},
    "add_bos without bos": {"tokenizer.ggml.add_bos_token": True},
    "add_eos without eos": {"tokenizer.ggml.add_eos_token": True},
    "pre not a string": {"tokenizer.ggml.pre": 5},
}


@pytest.mark.parametrize("what", sorted(BAD_BPE))
def test_malformed_bpe_metadata_raises_gguf_error(tmp_path, what):
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["h", "e", "he", "x", "y"],
          "tokenizer.ggml.merges": ["h e"], "tokenizer.ggml.pre": "gpt-2"}
    md.update(BAD_BPE[what])
    path = write(tmp_path, {k: v for k, v in md.items() if v is not None})
    with pytest.raises(pf.GGUFError):
        pf.Tokenizer(path)


def test_no_tokenizer_or_unknown_model(tmp_path):
    p = write(tmp_path, {"general.architecture": "llama"})
    with pytest.raises(pf.GGUFError, match="no tokenizer"):
        pf.open(p).tokenizer
    p = write(tmp_path, spm_meta(**{"tokenizer.ggml.model": "bert"}))
    with pytest.raises(pf.FoundryNotImplementedError, match="bert"):
        pf.Tokenizer(p)


def test_out_of_range_special_id_warns_and_keeps_default(tmp_path):
    p = write(tmp_path, spm_meta(**{"tokenizer.ggml.bos_token_id": 99,
                                    "tokenizer.ggml.padding_token_id": 0xFFFFFFFF}),
              {"tokenizer.ggml.bos_token_id": "uint32", "tokenizer.ggml.padding_token_id": "uint32"})
    with pytest.warns(UserWarning, match="bos_token_id = 99"):
        tok = pf.Tokenizer(p)
    assert tok.bos_id == 1 and tok.pad_id is None and len(tok.warnings) == 1


def test_missing_scores_and_types_are_allowed(tmp_path):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + \
        ["\u2581a", "a", "\u2581"]
    p = write(tmp_path, {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens})
    tok = pf.Tokenizer(p)
    ids = tok.encode("a é", add_special=False)
    assert tok.decode(ids) == "a é"  # é through <0xXX> tokens inferred as byte tokens


def test_random_metadata_never_crashes(tmp_path):
    rng = random.Random(11)
    alphabet = ["a", "b", "ab", "\u0120", "\u0120a", " ", "<s>", "", "\u2581", "ba", "aa"]
    for i in range(60):
        n = rng.randint(1, 12)
        tokens = list(dict.fromkeys(rng.choice(alphabet) + str(rng.randint(0, 3))
                                    if rng.random() < 0.3 else rng.choice(alphabet)
                                    for _ in range(n)))
        md = {"tokenizer.ggml.model": rng.choice(["llama", "gpt2"]),
              "tokenizer.ggml.tokens": tokens,
              "tokenizer.ggml.token_type": [rng.randint(0, 7) for _ in tokens],
              "tokenizer.ggml.scores": [rng.uniform(-5, 5) for _ in tokens],
              "tokenizer.ggml.merges": [f"{rng.choice(tokens)} {rng.choice(tokens)}"
                                        for _ in range(rng.randint(0, 6))],
              "tokenizer.ggml.pre": rng.choice(list(PRE_RULES) + ["?"])}
        p = tmp_path / f"r{i}.gguf"
        pf.write_gguf(p, metadata=md, types={"tokenizer.ggml.token_type": "array[int32]"})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = pf.Tokenizer(p)
        except (pf.GGUFError, pf.FoundryNotImplementedError):
            continue
        for _ in range(5):
            text = random_text(rng, rng.randint(0, 30))
            ids = tok.encode(text, parse_special=rng.random() < 0.5)
            tok.decode(ids, skip_special=rng.random() < 0.5)
            assert all(0 <= x < tok.vocab_size for x in ids)


# ---- speed ------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", vocab_params())
def test_encoding_100kb_takes_under_a_second(vocab):
    tok = vocab_tokenizer(vocab)
    rng = random.Random(0)
    texts = {"mixed": random_text(rng, 100_000, spm=True), "letters": "a" * 100_000,
             "spaces": " " * 100_000 + "x", "digits": "7" * 100_000,
             "newlines": "\n \n" * 33_000, "cjk": "我" * 33_000}
    for kind, text in texts.items():
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special=False, parse_special=True)
        dt = time.perf_counter() - t0
        assert dt < 1.0, f"{kind}: {dt:.2f} s"
        assert tok.decode(ids, skip_special=False) == text


# ---- the C API through cffi ------------------------------------------------------------------

@pytest.fixture(scope="module")
def clib():
    cffi = pytest.importorskip("cffi")
    from test_cffi import header_cdef
    path = os.environ.get("PYFOUNDRY_CFFI_LIB")
    if not path:
        if not shutil.which("make") or not shutil.which(os.environ.get("CC", "cc")):
            pytest.skip("make or a C compiler is missing")
        r = subprocess.run(["make", "-s", "build/libfoundry.so"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        path = str(ROOT / "build" / "libfoundry.so")
    ffi = cffi.FFI()
    ffi.cdef(header_cdef())
    return ffi, ffi.dlopen(path)


def test_c_api_reports_the_size_needed_when_the_buffer_is_small(clib, stories_path):
    ffi, C = clib
    g = ffi.new("fdy_gguf **")
    assert C.fdy_gguf_open(str(stories_path).encode(), g) == C.FDY_OK
    t = ffi.new("fdy_tokenizer **")
    assert C.fdy_tokenizer_create(g[0], t) == C.FDY_OK
    C.fdy_gguf_close(g[0])  # the tokenizer keeps its own copy
    tok = t[0]
    text = "Once upon a time, there was a cat.".encode()
    n = ffi.new("int64_t *")
    assert C.fdy_tokenizer_encode(tok, text, len(text), 1, 0, ffi.NULL, 0, n) == C.FDY_ERR_SPACE
    need = n[0]
    ids = ffi.new("int32_t[]", need)
    assert C.fdy_tokenizer_encode(tok, text, len(text), 1, 0, ids, need - 1, n) == \
        C.FDY_ERR_SPACE and n[0] == need
    assert C.fdy_tokenizer_encode(tok, text, len(text), 1, 0, ids, need, n) == C.FDY_OK
    py = pf.Tokenizer(stories_path)
    assert list(ids) == py.encode(text)
    size = ffi.new("size_t *")
    assert C.fdy_tokenizer_decode(tok, ids, need, 0, ffi.NULL, 0, size) == C.FDY_ERR_SPACE
    buf = ffi.new("char[]", size[0])
    assert C.fdy_tokenizer_decode(tok, ids, need, 0, buf, size[0], size) == C.FDY_OK
    assert ffi.buffer(buf, size[0])[:] == text
    bad = ffi.new("int32_t[]", [1, 9999])
    assert C.fdy_tokenizer_decode(tok, bad, 2, 0, ffi.NULL, 0, size) == C.FDY_ERR_RANGE
    assert b"out of range" in ffi.string(C.fdy_last_error())
    piece = ffi.new("fdy_str *")
    assert C.fdy_tokenizer_token_to_piece(tok, 1, 1, piece) == C.FDY_OK
    assert ffi.buffer(piece.ptr, piece.len)[:] == b"<s>"
    d = ffi.new("fdy_detokenizer **")
    assert C.fdy_detokenizer_create(tok, 0, d) == C.FDY_OK
    out = b""
    for i in range(need):
        assert C.fdy_detokenizer_push(d[0], ids[i], piece) == C.FDY_OK
        out += ffi.buffer(piece.ptr, piece.len)[:]
    assert C.fdy_detokenizer_flush(d[0], piece) == C.FDY_OK and piece.len == 0
    assert out == text
    C.fdy_detokenizer_free(d[0])
    assert C.fdy_tokenizer_special(tok, C.FDY_SPECIAL_BOS) == 1
    assert C.fdy_tokenizer_vocab_type(tok) == C.FDY_VOCAB_SPM
    C.fdy_tokenizer_free(tok)


# ---- the generated tables --------------------------------------------------------------------------

def test_unicode_tables_are_generated_from_this_pythons_unicodedata():
    header = (ROOT / "foundry_c" / "src" / "unicode_tables.h").read_text()
    if f'"{unicodedata.unidata_version}"' not in header:
        pytest.skip(f"the header was generated with another Unicode version than "
                    f"{unicodedata.unidata_version}")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_unicode_tables.py"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
