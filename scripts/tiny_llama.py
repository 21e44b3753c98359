#!/usr/bin/env python3
# tiny_llama.py - write a tiny, deterministic Llama-architecture GGUF model
# for integration tests against a REAL llama.cpp `llama-server`.
#
# Used by `scripts/llama-engine model`, which runs it as
#
#     python tiny_llama.py --vocab ggml-vocab-llama-spm.gguf --out tiny-llama.gguf
#
# inside a venv that has the `gguf` package from PyPI.  The tests never call
# this file directly: they start the server with `scripts/llama-engine up`.
#
# What the model is
#   * architecture `llama`: 2 blocks, n_embd 128, 4 heads, n_ff 256, rope,
#     RMSNorm - every tensor a real Llama model has, so llama.cpp runs its
#     normal graph (attention, KV cache, feed-forward) on every token;
#   * the REAL Llama-2 SentencePiece vocabulary (32000 tokens, scores, token
#     types, bos=1 / eos=2 / unk=0, add_bos) copied from the vocab GGUF that
#     llama.cpp ships under models/, and the standard Llama-2 chat template
#     (`<s>[INST] <<SYS>>...<</SYS>> ... [/INST]`), so /v1/chat/completions
#     works with --jinja;
#   * weights are random (numpy, fixed seed: same bytes every run) but
#     shaped so that the output is readable: the transformer blocks get small
#     random weights, and the embedding / output matrices encode a small
#     word-level grammar over 109 ordinary English word and punctuation
#     tokens (a bigram chain on the current token).  Replies look like
#         The young man said "Hello there". We found the dark road.
#     i.e. real words, frequent "double-quoted" phrases, sentences ending with
#     ".", and after a "." the end-of-text token with probability ~0.2, so
#     some replies stop by themselves (finish_reason "stop") after a few
#     sentences (as early as 5-10 tokens, median ~50) and others run to
#     max_tokens ("length").  With temperature 0 (greedy) a chat reply is
#     always `The young man said "Hello there".` (10 tokens) and then EOS.
#   * every token outside the grammar (prompt text, template tokens such as
#     `[/INST]`) acts like a "start of reply" state, so whatever the prompt,
#     the reply starts a fresh sentence.
#
# The probabilities are set for llama-server's default sampling
# (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05); other temperatures
# only sharpen or flatten them.  `--preview N` prints N replies sampled from
# the same chain in Python (no llama.cpp needed), to see what to expect.

import argparse
import hashlib
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover - explained to the user
    sys.exit("tiny_llama.py: the 'gguf' Python package is missing (pip install gguf numpy)")

# ---------------------------------------------------------------------------
# The grammar.  Each class lists its word tokens (SentencePiece pieces; "▁"
# is the word-initial space).  Classes are disjoint: a token's own class
# decides its successors, which is how the chain "knows" whether it is inside
# a quotation (inside-quote words are a separate set).
# ---------------------------------------------------------------------------
SP = "\u2581"  # SentencePiece word boundary


def w(*words):
    return [SP + x for x in words]


CLASSES = {
    # first word of the reply (no leading space: follows the prompt)
    "START_DET": ["The", "This", "My"],
    "START_PRON": ["We", "She", "He", "They", "I"],
    # first word of a later sentence (after ". ")
    "SENT_DET": w("The", "This", "My", "Our"),
    "SENT_PRON": w("We", "She", "He", "They", "I", "You"),
    "DET": w("the", "a", "my", "every", "that", "our"),
    "ADJ": w("young", "little", "bright", "quiet", "strange", "good", "new", "long", "dark", "small"),
    "NOUN": w("man", "woman", "city", "house", "river", "road", "story", "night", "friend",
              "door", "book", "garden", "king", "dog", "girl", "boy", "ship", "letter"),
    "VERB": w("walked", "found", "saw", "wanted", "knew", "told", "heard", "opened", "loved",
              "kept", "followed", "remembered"),
    "PREP": w("in", "on", "near", "under", "from", "through"),
    "SAY": w("said", "asked", "replied", "wrote", "cried", "answered"),
    "AND": w("and"),
    "COMMA": [","],
    "PERIOD": ["."],
    "OPENQ": [SP + '"'],         # ' "'  opening double quote
    "QSTART": ["Hello", "Yes", "Come", "Look", "Please", "Wait", "Oh", "No"],
    "QWORD": w("there", "home", "now", "here", "again", "together", "soon", "please", "friends",
               "world", "back", "away", "dear", "quickly", "me", "us", "all", "forever"),
    "QPUNCT": ["!", "?"],
    "CLOSEQ": ['"'],             # '"'   closing double quote (no space)
    "EOS": ["</s>"],
}

# Successor classes and their total probability (at temperature 0.8).
# "START" is the state of every token outside the grammar.
TRANSITIONS = {
    "START": {"START_DET": 0.6, "START_PRON": 0.4},
    "START_DET": {"ADJ": 0.45, "NOUN": 0.55},
    "SENT_DET": {"ADJ": 0.45, "NOUN": 0.55},
    "DET": {"ADJ": 0.4, "NOUN": 0.6},
    "START_PRON": {"SAY": 0.5, "VERB": 0.5},
    "SENT_PRON": {"SAY": 0.5, "VERB": 0.5},
    "ADJ": {"NOUN": 0.9, "ADJ": 0.1},
    "NOUN": {"SAY": 0.3, "VERB": 0.3, "PREP": 0.12, "PERIOD": 0.13, "COMMA": 0.08, "AND": 0.07},
    "VERB": {"DET": 0.6, "PREP": 0.25, "PERIOD": 0.15},
    "PREP": {"DET": 1.0},
    "SAY": {"OPENQ": 0.8, "COMMA": 0.2},
    "COMMA": {"OPENQ": 0.4, "AND": 0.3, "DET": 0.3},
    "AND": {"DET": 0.6, "VERB": 0.4},
    "OPENQ": {"QSTART": 1.0},
    "QSTART": {"QWORD": 1.0},
    "QWORD": {"QWORD": 0.55, "CLOSEQ": 0.3, "QPUNCT": 0.15},
    "QPUNCT": {"CLOSEQ": 1.0},
    "CLOSEQ": {"PERIOD": 0.55, "COMMA": 0.15, "AND": 0.3},
    "PERIOD": {"EOS": 0.2, "SENT_DET": 0.4, "SENT_PRON": 0.4},
}

# The greedy (temperature 0) successor of each class; it gets a boost so it
# is the arg-max of its row.  Following it from any state reaches EOS:
#   The young man said "Hello there".</s>
GREEDY = {
    "START": "The", "START_DET": SP + "young", "SENT_DET": SP + "young", "DET": SP + "young",
    "START_PRON": SP + "said", "SENT_PRON": SP + "said", "ADJ": SP + "man",
    "NOUN": SP + "said", "VERB": "." , "PREP": SP + "the", "SAY": SP + '"',
    "COMMA": SP + '"', "AND": SP + "the", "OPENQ": "Hello", "QSTART": SP + "there",
    "QWORD": '"', "QPUNCT": '"', "CLOSEQ": ".", "PERIOD": "</s>",
}

T_DESIGN = 0.8        # logits = T_DESIGN * log(p): llama-server's default temperature
LOGIT_OFF = -40.0     # logit of a token that must not follow (relative to ~0 for allowed)


def load_vocab(path):
    """Read the tokenizer arrays and ids of a vocab-only GGUF."""
    r = gguf.GGUFReader(path)
    f = r.fields

    def scalar(key, default=None):
        return f[key].contents() if key in f else default

    tokens = [f["tokenizer.ggml.tokens"].contents(i) for i in range(len(f["tokenizer.ggml.tokens"].data))]
    vocab = {
        "model": scalar("tokenizer.ggml.model"),
        "pre": scalar("tokenizer.ggml.pre", "default"),
        "tokens": tokens,
        "scores": [float(x) for x in f["tokenizer.ggml.scores"].contents()],
        "types": [int(x) for x in f["tokenizer.ggml.token_type"].contents()],
        "bos": int(scalar("tokenizer.ggml.bos_token_id", 1)),
        "eos": int(scalar("tokenizer.ggml.eos_token_id", 2)),
        "unk": int(scalar("tokenizer.ggml.unknown_token_id", 0)),
        "add_bos": bool(scalar("tokenizer.ggml.add_bos_token", True)),
        "add_eos": bool(scalar("tokenizer.ggml.add_eos_token", False)),
    }
    if vocab["model"] != "llama" or len(tokens) != 32000:
        sys.exit(f"tiny_llama.py: {path} is not the Llama-2 SentencePiece vocab "
                 f"(model={vocab['model']!r}, {len(tokens)} tokens)")
    return vocab


def build_chain(vocab, rng):
    """Return (states, M): the grammar's token ids (row order) and the
    next-token logit matrix M[state, token] over the whole vocabulary.
    State 0 is START (all tokens outside the grammar)."""
    index = {t: i for i, t in enumerate(vocab["tokens"])}
    ids = {}
    seen = set()
    for cls, pieces in CLASSES.items():
        for p in pieces:
            if p not in index:
                sys.exit(f"tiny_llama.py: piece {p!r} of class {cls} is not a single token in the vocab")
            if p in seen:
                sys.exit(f"tiny_llama.py: piece {p!r} is in two classes")
            seen.add(p)
        ids[cls] = [index[p] for p in pieces]
    eos = vocab["eos"]
    assert ids["EOS"] == [eos]

    # state list: START, then every grammar token except EOS (never an input)
    states = [("START", None)]
    for cls, tids in ids.items():
        if cls != "EOS":
            states += [(cls, t) for t in tids]

    n_vocab = len(vocab["tokens"])
    M = np.full((len(states), n_vocab), LOGIT_OFF, dtype=np.float64)
    for row, (cls, _tid) in enumerate(states):
        probs = {}
        for succ_cls, mass in TRANSITIONS[cls].items():
            members = ids[succ_cls]
            # per-token random split of the class mass (seeded); keep ratios
            # within ~3x so min-p / top-p do not cut members away
            weights = rng.uniform(1.0, 3.0, size=len(members))
            weights = weights / weights.sum() * mass
            for t, p in zip(members, weights):
                probs[t] = probs.get(t, 0.0) + p
        greedy = index[GREEDY[cls]]
        if greedy not in probs:
            sys.exit(f"tiny_llama.py: greedy successor {GREEDY[cls]!r} of {cls} is not a successor")
        top_other = max((p for t, p in probs.items() if t != greedy), default=0.0)
        probs[greedy] = max(probs[greedy], 1.6 * top_other)
        total = sum(probs.values())
        for t, p in probs.items():
            M[row, t] = T_DESIGN * np.log(p / total)
    return states, M


def build_tensors(vocab, states, M, rng, n_embd, n_layer, n_ff):
    """Embedding and output matrices that realise M exactly through the
    final RMSNorm, plus small random transformer blocks."""
    n_vocab = len(vocab["tokens"])
    n_states = len(states)

    # one orthonormal direction per state in the first n_embd-1 dims, plus a
    # component common to all states in the last dim: it carries the big
    # shared "token not allowed" logit, which keeps the output rows short so
    # the blocks' small random contribution barely moves the logits.  The
    # scale (a larger residual stream) serves the same end.
    if n_states > n_embd - 1:
        sys.exit(f"tiny_llama.py: {n_states} grammar states need n_embd >= {n_states + 1}")
    q, _ = np.linalg.qr(rng.standard_normal((n_embd - 1, n_embd - 1)))
    emb_scale = 16.0
    X = np.zeros((n_states, n_embd))
    X[:, :-1] = q[:n_states] * emb_scale / np.sqrt(2.0)
    X[:, -1] = emb_scale / np.sqrt(2.0)              # (n_states, n_embd)

    tok_embd = np.repeat(X[0:1], n_vocab, axis=0)     # outside the grammar: START
    tok_embd += rng.standard_normal(tok_embd.shape) * 2e-4 * emb_scale
    for row, (_cls, tid) in enumerate(states):
        if tid is not None:
            tok_embd[tid] = X[row]

    # final RMSNorm (weight 1): h = x / rms(x); logits = output @ h.
    H = X / np.sqrt(np.mean(X * X, axis=1, keepdims=True))
    out = (np.linalg.pinv(H) @ M).T                   # (n_vocab, n_embd), exact on the states

    def small(*shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {
        "token_embd.weight": tok_embd.astype(np.float16),
        "output_norm.weight": np.ones(n_embd, dtype=np.float32),
        "output.weight": out.astype(np.float16),
    }
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        tensors[p + "attn_q.weight"] = small(n_embd, n_embd, std=0.08)
        tensors[p + "attn_k.weight"] = small(n_embd, n_embd, std=0.08)
        tensors[p + "attn_v.weight"] = small(n_embd, n_embd, std=0.01)
        tensors[p + "attn_output.weight"] = small(n_embd, n_embd, std=0.01)
        tensors[p + "ffn_norm.weight"] = np.ones(n_embd, dtype=np.float32)
        tensors[p + "ffn_gate.weight"] = small(n_ff, n_embd, std=0.05)
        tensors[p + "ffn_up.weight"] = small(n_ff, n_embd, std=0.01)
        tensors[p + "ffn_down.weight"] = small(n_embd, n_ff, std=0.01)
    return tensors


# The standard Llama-2 chat template (as in meta-llama/Llama-2-*-chat-hf).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def write_gguf(path, vocab, tensors, n_embd, n_layer, n_head, n_ff):
    tmp = path + ".tmp"
    wr = gguf.GGUFWriter(tmp, "llama")
    wr.add_name("roleplay-tiny-llama")
    wr.add_description("tiny random Llama model for integration tests (scripts/tiny_llama.py)")
    wr.add_context_length(4096)
    wr.add_embedding_length(n_embd)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(n_ff)
    wr.add_head_count(n_head)
    wr.add_head_count_kv(n_head)
    wr.add_rope_dimension_count(n_embd // n_head)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_vocab_size(len(vocab["tokens"]))
    wr.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    wr.add_tokenizer_model(vocab["model"])
    wr.add_tokenizer_pre(vocab["pre"])
    wr.add_token_list(vocab["tokens"])
    wr.add_token_scores(vocab["scores"])
    wr.add_token_types(vocab["types"])
    wr.add_bos_token_id(vocab["bos"])
    wr.add_eos_token_id(vocab["eos"])
    wr.add_unk_token_id(vocab["unk"])
    wr.add_add_bos_token(vocab["add_bos"])
    wr.add_add_eos_token(vocab["add_eos"])
    wr.add_chat_template(LLAMA2_CHAT_TEMPLATE)

    for name, arr in tensors.items():
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    os.replace(tmp, path)


def preview(vocab, states, M, n, rng, max_tokens=120):
    """Sample from the chain the way llama-server does by default."""
    row_of = {tid: r for r, (_c, tid) in enumerate(states) if tid is not None}
    toks = vocab["tokens"]
    for _ in range(n):
        row, out, stop = 0, [], "length"
        for _ in range(max_tokens):
            logits = M[row] / 0.8
            top = np.argsort(logits)[::-1][:40]                # top-k 40
            p = np.exp(logits[top] - logits[top].max())
            p /= p.sum()
            keep = np.cumsum(p) - p < 0.95                     # top-p 0.95
            keep &= p >= 0.05 * p.max()                        # min-p 0.05
            top, p = top[keep], p[keep] / p[keep].sum()
            t = int(rng.choice(top, p=p))
            if t == vocab["eos"]:
                stop = "stop"
                break
            out.append(toks[t])
            row = row_of.get(t, 0)
        print(f"[{stop:6} {len(out):3} tok] " + "".join(out).replace(SP, " "))


def main():
    ap = argparse.ArgumentParser(description="Write a tiny deterministic Llama GGUF model for tests.")
    ap.add_argument("--vocab", required=True, help="ggml-vocab-llama-spm.gguf from llama.cpp models/")
    ap.add_argument("--out", help="GGUF file to write")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=256)
    ap.add_argument("--preview", type=int, default=0, metavar="N",
                    help="print N replies sampled from the grammar chain")
    a = ap.parse_args()
    if not a.out and not a.preview:
        ap.error("give --out and/or --preview")

    vocab = load_vocab(a.vocab)
    rng = np.random.default_rng(a.seed)
    states, M = build_chain(vocab, rng)
    if a.preview:
        preview(vocab, states, M, a.preview, np.random.default_rng(a.seed + 1))
    if a.out:
        tensors = build_tensors(vocab, states, M, rng, a.embd, a.layers, a.ff)
        write_gguf(a.out, vocab, tensors, a.embd, a.layers, a.heads, a.ff)
        digest = hashlib.sha256(open(a.out, "rb").read()).hexdigest()
        print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes, sha256 {digest[:16]}, "
              f"{len(states)} grammar states)")


if __name__ == "__main__":
    main()
