"""The texts every parity test runs: chosen to reach the corners of tokenization and batching."""

# 100,000 characters of varied words (deterministic), one single text
HUGE_TEXT = " ".join(f"w{(i * 7919) % 9973}x" for i in range(20_000))[:100_000]
LONG_TEXT = " ".join(f"Sentence number {i} talks about embeddings, tokens and attention." for i in range(120))

PARITY_TEXTS = [
    "",                                                     # only [CLS] [SEP]
    "a",
    "query: ",
    "   \t\n  ",                                            # whitespace only
    "query: how much protein should a female eat",
    "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 "
    "is 46 grams per day. But, as you can see from this chart, you'll need to increase that if you're "
    "expecting or training for a marathon.",
    "Crème brûlée, naïve café, Ångström, São Paulo, Dvořák.",          # accents
    "我爱自然语言处理。東京は日本の首都です。한국어 문장입니다.",           # CJK
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖",
    "def f(x):\n    return {'a': [x ** 2 for _ in range(10)]}  # code",
    "[CLS] literal [SEP] special [MASK] tokens [PAD] in text [UNK]",
    "control \x00 chars \x1b[31m red \x07 bell",
    "zero\u200bwidth\u200djoiner e\u0301 combining a\u0308 o\u0302",  # zero-width and combining marks
    "مرحبا بالعالم وשלום עולם",                              # right-to-left scripts
    "x" * 150 + " pneumonoultramicroscopicsilicovolcanoconiosis" * 3,  # a word over WordPiece's 100-char limit
    "the cat sat on the mat",                                # these two have equal token lengths
    "the dog lay on the rug",
    "the cat sat on the mat",                                # an exact duplicate
    LONG_TEXT,                                               # > 512 tokens: truncated
    HUGE_TEXT,                                               # a single 100,000-character text
]
