import dataclasses
import inspect
import os
import pickle
import random
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import CleanConfig
from lmforge.data.clean import CleanStats, StepCount, clean_document, dup_line_frac, top_ngram_frac
from lmforge.data.dedup import DedupKey, Deduplicator, dedup_key, shingle_hashes
from lmforge.data.document import Document
from lmforge.errors import DataError

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"

# Every step off, so a test can switch on just the one it is about.
OFF = CleanConfig(normalize="none", control_chars=False, whitespace=False, min_chars=0)

ZH = ("人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式"
      "做出反应的智能机器。该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。"
      "自从人工智能诞生以来，理论和技术日益成熟，应用领域也不断扩大。可以设想，未来人工智能带来的"
      "科技产品，将会是人类智慧的容器。语言模型通过学习大量文本来预测下一个词，它们在翻译、摘要和"
      "问答等任务上表现出色。")
ZH_OTHER = ("长江是中国第一大河，发源于青藏高原的唐古拉山脉，流经十一个省级行政区，最后在上海注入东海。"
            "长江流域气候温暖，雨量充沛，土地肥沃，自古以来就是重要的农业区。沿江有许多历史名城，"
            "例如重庆、武汉和南京，每年都吸引大量游客前来参观游览，品尝当地的特色美食。")


def clean(text: str, cfg: CleanConfig = OFF, stats: CleanStats | None = None) -> str | None:
    doc = clean_document(Document(text, "d"), cfg, stats if stats is not None else CleanStats())
    return None if doc is None else doc.text


def only(**kw) -> CleanConfig:
    return dataclasses.replace(OFF, **kw)


# ---------------------------------------------------------------- single steps

def test_normalize_nfc_composes_and_nfkc_folds_full_width():
    full_width = "\uff21\uff22\uff23\uff11\uff12\uff13\uff01"  # ＡＢＣ１２３！
    assert clean("e\u0301t\u00e9 " + full_width, only(normalize="NFC", fold_fullwidth=False)) == \
        "\u00e9t\u00e9 " + full_width
    # by default NFC folds the letters and digits only: CJK writes its punctuation full-width
    assert clean("e\u0301t\u00e9 " + full_width, only(normalize="NFC")) == "\u00e9t\u00e9 ABC123\uff01"
    assert clean("e\u0301t\u00e9 " + full_width + " \ufb01", only(normalize="NFKC")) == \
        "\u00e9t\u00e9 ABC123! fi"
    assert clean("e\u0301", OFF) == "e\u0301"


def test_control_chars_keep_meaningful_format_characters():
    text = ("a\x00b\x07c\x1b[1;31md\x1b[0m\ufeffe\u200bf\u00adg\x85h\u202ei"
            "\t\n\r\ufffd fa\u200cal \U0001f468\u200d\U0001f469 \u200f")
    assert clean(text, only(control_chars=True)) == \
        "abcdefghi\t\n\r\ufffd fa\u200cal \U0001f468\u200d\U0001f469 \u200f"
    assert clean("x\ud800y", only(control_chars=True)) == "x\ufffdy"  # lone surrogate


def test_control_chars_ascii_fast_path_removes_what_the_general_one_does():
    # ASCII text takes a bytes.translate path; with one non-ASCII letter it takes the
    # Unicode-category pattern. Both must drop the same ASCII characters.
    every_ascii = "".join(map(chr, range(128)))
    fast = clean(every_ascii, only(control_chars=True))
    general = clean(every_ascii + "\u00e9", only(control_chars=True))
    assert general == fast + "\u00e9"
    assert fast == "\t\n\r" + "".join(map(chr, range(32, 127)))


def test_whitespace_line_ends_trailing_blanks_and_blank_runs():
    text = "a \t\r\nb\rc   \n\n\n\n\nd\n    indented \n\tx  \n  \n\u3000y\u3000\n"
    assert clean(text, only(whitespace=True)) == \
        "a\nb\nc\n\n\nd\n    indented\n\tx  \n\n\u3000y\n"
    # Two blank lines (PEP 8 between functions) stay; three become two; so do leading ones.
    assert clean("\n\n\n\nx\n\n\ny\n", only(whitespace=True)) == "\n\nx\n\n\ny\n"


def test_markup_strips_tags_scripts_and_decodes_entities():
    page = ('<!DOCTYPE html><html><head><title>T</title><style>p {color: red}</style>'
            '<script>var s = "<b>";</script></head><body><h1>Head</h1>'
            '<p>One &amp; two<br/>three</p><!-- note --><ul><li>x &lt;y&gt;</li>'
            '<li><a href="a>b" class=\'c\'>link</a> &#233;</li></ul><![CDATA[raw]]></body></html>')
    assert clean(page, only(markup=True)) == \
        "T\n\nHead\nOne & two\nthree\nx <y>\nlink \u00e9\n\nraw"
    assert clean("a < b and 1 > 0 &c", only(markup=True)) == "a < b and 1 > 0 &c"


@pytest.mark.parametrize("text, expected", [
    ("mail john.doe+lm@example.co.uk.", "mail <EMAIL>."),
    ("+1 415-555-2671, (415) 555-2671, 415.555.2671, 1-800-555-0199",
     "<PHONE>, <PHONE>, <PHONE>, <PHONE>"),
    ("+44 20 7946 0958; +49 (0)30 123456; +8613800138000", "<PHONE>; <PHONE>; <PHONE>"),
    ("030 1234567; 06 12 34 56 78; (030) 1234567", "<PHONE>; <PHONE>; <PHONE>"),
    ("at 192.168.0.1, 10.0.0.255.", "at <IP>, <IP>."),
    ("fe80::1 2001:db8::8a2e:370:7334 ::ffff:192.168.0.1", "<IP> <IP> <IP>"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "<IP>"),
])
def test_mask_pii_masks(text, expected):
    assert clean(text, only(mask_pii=True)) == expected


@pytest.mark.parametrize("text", [
    "On 2024-01-15, 05.12.2020 and 01/02/2023 at 12:30:45",
    "pi is 3.14159, v1.2.3 costs $1,234.56 or 1.234,56 EUR",
    "in 1999 we had 1234567890 and 10 000 000 000 of 555-1234",
    "256.1.1.1 1.2.3.4.5 v1.2.3.4 ISBN 978-3-16-148410-0",
    "x[1::2] std::vector a::b :: 00:1a:2b:3c:4d:5e 3+4 +5 apples",
    "user@localhost @decorator",
])
def test_mask_pii_leaves_numbers_dates_and_code(text):
    assert clean(text, only(mask_pii=True)) == text


def test_segment_chinese_spaces_words_only_inside_han_runs():
    assert clean("我爱北京天安门。Hello, world 2024!", only(segment_chinese=True)) == \
        "我 爱 北京 天安门。Hello, world 2024!"
    assert clean("no Chinese here", only(segment_chinese=True)) == "no Chinese here"


def test_segment_chinese_without_jieba_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # what an absent package looks like to import
    with pytest.raises(DataError, match=r"pip install 'lmforge\[zh\]'"):
        clean("中文", only(segment_chinese=True))
    assert clean("no Han, no jieba needed", only(segment_chinese=True)) == "no Han, no jieba needed"


def test_lowercase_and_strip_punct_keep_placeholders():
    cfg = only(mask_pii=True, lowercase=True, strip_punct=True)
    assert clean("Mail ME at a@b.org, NOW! «Ça va?» — 10.0.0.1", cfg) == \
        "mail me at <EMAIL> now ça va  <IP>"
    assert clean("Don't stop.", only(lowercase=True)) == "don't stop."


def test_length_and_repetition_filters():
    assert clean("abcd", only(min_chars=5)) is None
    assert clean("abcde", only(min_chars=5)) == "abcde"
    assert clean("abcdef", only(max_chars=5)) is None
    assert dup_line_frac("aa\nb\n\naa\nc") == pytest.approx(2 / 6)
    assert top_ngram_frac("x y z w v x y z w v q") == pytest.approx(10 / 11)
    assert top_ngram_frac("a b c d e f g") == 0.0
    assert clean("aa\nb\naa\nc", only(max_dup_line_frac=0.3)) is None
    assert clean("aa\nb\naa\nc", only(max_dup_line_frac=0.4)) == "aa\nb\naa\nc"
    assert clean("x y z w v x y z w v q", only(max_dup_ngram_frac=0.9)) is None


# ---------------------------------------------------------------- counts

def test_counts_per_step_on_a_batch():
    cfg = CleanConfig(markup=True)
    stats = CleanStats()
    texts = ["Hi  \r\nyou", "<p>x</p>", "\x00\x01", "   ", "<script>x</script>", "caf\u00e9"]
    out = [clean(t, cfg, stats) for t in texts]
    assert out == ["Hi  \nyou", "x", None, None, None, "caf\u00e9"]
    assert stats.as_dict() == {
        # 9 + 8 + 2 + 3 + 18 + 5 bytes; "\x00\x01" emptied by control_chars (2 bytes),
        # "   " by whitespace (3), "\r" goes (1), "<p>x</p>" becomes "x" (-7), the script goes (18).
        "normalize": {"docs_in": 6, "docs_out": 6, "bytes_in": 45, "bytes_out": 45},
        "control_chars": {"docs_in": 6, "docs_out": 5, "bytes_in": 45, "bytes_out": 43},
        "whitespace": {"docs_in": 5, "docs_out": 4, "bytes_in": 43, "bytes_out": 39},
        "markup": {"docs_in": 4, "docs_out": 3, "bytes_in": 39, "bytes_out": 14},
        "length": {"docs_in": 3, "docs_out": 3, "bytes_in": 14, "bytes_out": 14},
    }


def test_stats_merge_adds_and_keeps_pipeline_order():
    a, b = CleanStats(), CleanStats()
    a.count("length", bytes_in=10, bytes_out=10)
    b.count("dedup_exact", bytes_in=5, bytes_out=None)
    b.count("length", bytes_in=7, bytes_out=None)
    b.count("normalize", bytes_in=7, bytes_out=7)
    a.merge(b)
    assert list(a.as_dict()) == ["normalize", "length", "dedup_exact"]
    assert a.steps["length"] == StepCount(docs_in=2, docs_out=1, bytes_in=17, bytes_out=10)
    assert a.steps["dedup_exact"] == StepCount(docs_in=1, docs_out=0, bytes_in=5, bytes_out=0)


# ---------------------------------------------------------------- defaults keep corpora intact

@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared/data/tinyshakespeare.txt is missing")
def test_defaults_leave_tinyshakespeare_byte_for_byte():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert clean(text, CleanConfig()) == text


def test_defaults_leave_python_sources_and_their_indentation():
    source = Path(inspect.getsourcefile(textwrap)).read_text(encoding="utf-8")
    assert clean(source, CleanConfig()) == source
    # Across the top-level stdlib modules, every non-blank line keeps its indentation.
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8")
        indents = [re.match(r"[ \t\f]*", line).group() for line in text.split("\n") if line.strip()]
        cleaned = clean(text, CleanConfig())
        assert [re.match(r"[ \t\f]*", line).group() for line in cleaned.split("\n")
                if line.strip()] == indents, path.name


def test_chinese_survives_nfkc_and_defaults():
    text = "（ＧＰＴ－２）在２０２４年，" + ZH + "你好！\u3000再见？"
    fold = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
    assert clean(text, CleanConfig()) == "（ＧＰＴ－２）在２０２４年，".translate(
        {c: c - 0xFEE0 for c in map(ord, "ＧＰＴ２０４")}) + ZH + "你好！\u3000再见？"
    assert clean(text, CleanConfig(fold_fullwidth=False)) == text
    assert clean(text, CleanConfig(normalize="NFKC")) == text.translate(fold)
    assert clean(text, CleanConfig(normalize="NFKC")).startswith("(GPT-2)在2024年,人工智能")


# ---------------------------------------------------------------- dedup

def words(seed: int, n: int = 200) -> list[str]:
    vocab = [f"w{i}" for i in range(2000)]
    rng = random.Random(seed)
    return [rng.choice(vocab) for _ in range(n)]


def jaccard(a: str, b: str) -> float:
    sa, sb = (set(shingle_hashes(" ".join(t.casefold().split())).tolist()) for t in (a, b))
    return len(sa & sb) / len(sa | sb)


def run_dedup(texts: list[str], cfg: CleanConfig) -> tuple[list[str | None], CleanStats]:
    dedup, stats = Deduplicator(cfg), CleanStats()
    verdicts = [dedup.check(str(i), dedup_key(t, cfg), nbytes=len(t.encode()), stats=stats)
                for i, t in enumerate(texts)]
    return verdicts, stats


def test_exact_dedup_catches_case_and_whitespace_variants():
    texts = ["The cat sat.\nOn the mat.", "the  CAT sat.   on the mat.\n", "The cat sat. On a mat."]
    verdicts, stats = run_dedup(texts, CleanConfig())
    assert verdicts == [None, "exact", None]
    assert stats.as_dict() == {
        "dedup_exact": {"docs_in": 3, "docs_out": 2, "bytes_in": 24 + 28 + 22, "bytes_out": 24 + 22}}


def test_near_dedup_catches_a_few_changed_words_and_keeps_others():
    base = words(0)
    edited = list(base)
    edited[50], edited[150] = "changed", "edited"
    a, b, other = " ".join(base), " ".join(edited), " ".join(words(1))
    assert 0.85 < jaccard(a, b) < 0.95
    verdicts, stats = run_dedup([a, b, other, a.upper()], CleanConfig(dedup_near=True))
    assert verdicts == [None, "near", None, "exact"]
    assert stats.steps["dedup_near"] == StepCount(3, 2, len(a + b + other), len(a + other))


def test_near_dedup_on_chinese_without_spaces():
    edited = ZH.replace("理论和技术日益成熟", "理论与技术日趋成熟")
    assert 0.8 < jaccard(ZH, edited) < 0.95
    verdicts, _ = run_dedup([ZH, edited, ZH_OTHER], CleanConfig(dedup_near=True))
    assert verdicts == [None, "near", None]


def test_dedup_key_pickles_and_is_the_same_in_another_process():
    cfg = CleanConfig(dedup_near=True)
    key = dedup_key(ZH + " mixed text", cfg)
    back = pickle.loads(pickle.dumps(key))
    assert isinstance(back, DedupKey) and back.digest == key.digest and len(key.digest) == 16
    assert key.hashvalues.dtype == np.uint64 and np.array_equal(back.hashvalues, key.hashvalues)
    # Workers have their own hash seeds; nothing in the key may depend on them.
    code = ("import sys; from lmforge.config import CleanConfig;"
            "from lmforge.data.dedup import dedup_key;"
            "k = dedup_key(sys.argv[1], CleanConfig(dedup_near=True));"
            "print(k.digest.hex(), k.hashvalues.tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code, ZH + " mixed text"], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.split() == [key.digest.hex(), key.hashvalues.tobytes().hex()]


def test_clean_document_is_deterministic_and_picklable():
    cfg = CleanConfig(normalize="NFKC", markup=True, mask_pii=True, segment_chinese=True,
                      lowercase=True, strip_punct=True)
    docs = [Document(t, str(i)) for i, t in enumerate(
        ["<b>Hi</b> a@b.org", ZH, "ＡＢＣ 192.168.1.1\r\n", "\x00"])]
    first = [clean_document(d, cfg, CleanStats()) for d in docs]
    again = [clean_document(d, pickle.loads(pickle.dumps(cfg)), CleanStats()) for d in docs]
    assert first == again and first[-1] is None
    assert pickle.loads(pickle.dumps(clean_document)) is clean_document

