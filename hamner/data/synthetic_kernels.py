"""Numba kernels of the synthetic-task generator: each sample is written as a sequence of piece ids.

A piece is a fixed text fragment (listed in FIXED below, in this file so that numba's cache sees every
change) or a word from data/synthetic_words.py (passed in as the `lex` array: the piece id of " word";
the id of "word" without its leading space is that id + 1). data/synthetic.py turns pieces into text
or, through a per-piece token table, straight into token ids. Every random draw comes from a
splitmix64 stream seeded from (seed, sample index), so sample i depends on nothing else.
"""
from __future__ import annotations

import numpy as np
from numba import njit

DIGITS: tuple[str, ...] = tuple("0123456789")
FIXED: tuple[str, ...] = DIGITS + (
    " ", " -", " +", " *", "+", "*", " =", ",", ".", "?", " ->", " |",
    "Calculate:",
    "Count the items:", "Count", " '", "' in:", " Answer:",
    "Brackets:", " (", " )", " [", " ]", " {", " }", " <", " >", " Valid:", " yes", " no",
    "[MAX", "[MIN", "[SUM", " [MAX", " [MIN", " [SUM", "]", "]]", "]]]",
    "Sort:", "Sort descending:",
    "Repeat", " times:",
    " What does", " do?", " Who",
    "If", " If", " then", " Therefore",
    "Which is bigger:", "Which is smaller:", " or", " equal", "Find the largest:", "Find the smallest:",
)
_ID = {p: i for i, p in enumerate(FIXED)}
DIG, SP, MINUS, PLUS, TIMES, PLUS_TIGHT, TIMES_TIGHT = (
    _ID["0"], _ID[" "], _ID[" -"], _ID[" +"], _ID[" *"], _ID["+"], _ID["*"])
EQ, COMMA, DOT, QMARK, ARROW, BAR = _ID[" ="], _ID[","], _ID["."], _ID["?"], _ID[" ->"], _ID[" |"]
CALC = _ID["Calculate:"]
COUNT_ITEMS, COUNT, QUOTE_OPEN, QUOTE_IN, ANSWER = (
    _ID["Count the items:"], _ID["Count"], _ID[" '"], _ID["' in:"], _ID[" Answer:"])
BRACKETS, BR_FIRST, VALID, YES, NO = _ID["Brackets:"], _ID[" ("], _ID[" Valid:"], _ID[" yes"], _ID[" no"]
LO_OPEN, LO_OPEN_SP, LO_CLOSE = _ID["[MAX"], _ID[" [MAX"], _ID["]"]
SORT, SORT_DESC = _ID["Sort:"], _ID["Sort descending:"]
REPEAT, TIMES_COLON = _ID["Repeat"], _ID[" times:"]
WHAT_DOES, DO_Q, WHO = _ID[" What does"], _ID[" do?"], _ID[" Who"]
IF, IF_SP, THEN, THEREFORE = _ID["If"], _ID[" If"], _ID[" then"], _ID[" Therefore"]
BIGGER, SMALLER, OR, EQUAL, LARGEST, SMALLEST = (
    _ID["Which is bigger:"], _ID["Which is smaller:"], _ID[" or"], _ID[" equal"],
    _ID["Find the largest:"], _ID["Find the smallest:"])

CATEGORIES: tuple[str, ...] = ("noun", "name", "act_v3", "act_base", "act_obj", "prop", "prop_cap")
NOUN, NAME, ACT_V3, ACT_BASE, ACT_OBJ, PROP, PROP_CAP = range(len(CATEGORIES))
N_TASKS = 9
MAX_PIECES = 4096  # far above the longest sample (a depth-2 listops is about 200 pieces)

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _seed(st, seed, i):
    st[0] = _mix(seed ^ _mix(np.uint64(i) + _GOLD))


@njit(cache=True)
def _below(st, n):
    """Uniform integer in [0, n)."""
    st[0] += _GOLD
    return np.int64(_mix(st[0]) % np.uint64(n))


@njit(cache=True)
def _unif(st):
    st[0] += _GOLD
    return np.float64(_mix(st[0]) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _put(pb, n, p):
    pb[n] = p
    return n + 1


@njit(cache=True)
def _num(pb, n, v, space):
    """The decimal number v: " -" for negatives, else an optional " ", then one piece per digit."""
    if v < 0:
        n = _put(pb, n, MINUS)
        v = -v
    elif space:
        n = _put(pb, n, SP)
    k = 1
    t = v // 10
    while t > 0:
        k += 1
        t //= 10
    for j in range(k):
        pb[n + k - 1 - j] = DIG + v % 10
        v //= 10
    return n + k


@njit(cache=True)
def _pick(st, cat_off, cat):
    """Index into lex of a random word of a category."""
    return cat_off[cat] + _below(st, cat_off[cat + 1] - cat_off[cat])


@njit(cache=True)
def _pick_distinct(st, cat_off, cat, chosen, k):
    """A word index of the category not among chosen[:k]."""
    while True:
        w = _pick(st, cat_off, cat)
        fresh = True
        for j in range(k):
            if chosen[j] == w:
                fresh = False
        if fresh:
            return w


@njit(cache=True)
def _arithmetic(pb, st, d):
    n = _put(pb, 0, CALC)
    if d <= 2:
        lo, hi, n_ops, n_terms = 1, 10 * d, 2, 2
    elif d == 3:
        lo, hi, n_ops, n_terms = 1, 100, 3, 2
    elif d == 4:
        lo, hi, n_ops, n_terms = 10, 500, 3, 2
    else:
        lo, hi, n_ops, n_terms = 10, 500, 2, 3
    total = lo + _below(st, hi - lo + 1)
    n = _num(pb, n, total, True)
    for _ in range(n_terms - 1):
        b = lo + _below(st, hi - lo + 1)
        op = _below(st, n_ops)
        if op == 0:
            n = _put(pb, n, PLUS)
            total += b
        elif op == 1:
            n = _put(pb, n, MINUS)
            total -= b
        else:  # multiplication only ever appears with two terms, so no precedence question arises
            n = _put(pb, n, TIMES)
            total *= b
        n = _num(pb, n, b, True)
    n = _put(pb, n, EQ)
    return _num(pb, n, total, True)


@njit(cache=True)
def _counting(pb, st, d, lex, cat_off):
    k = 2 + _below(st, 2 * d + 1)
    if d >= 3 and _below(st, 2) == 1:
        target = _pick(st, cat_off, NOUN)
        n = _put(pb, 0, COUNT)
        n = _put(pb, n, QUOTE_OPEN)
        n = _put(pb, n, lex[target] + 1)
        n = _put(pb, n, QUOTE_IN)
        hits = 0
        for j in range(k):
            if j > 0:
                n = _put(pb, n, COMMA)
            w = target
            if _unif(st) < 0.7:
                w = _pick(st, cat_off, NOUN)
            if w == target:
                hits += 1
            n = _put(pb, n, lex[w])
    else:
        hits = k
        n = _put(pb, 0, COUNT_ITEMS)
        for j in range(k):
            if j > 0:
                n = _put(pb, n, COMMA)
            n = _put(pb, n, lex[_pick(st, cat_off, NOUN)])
    n = _put(pb, n, DOT)
    n = _put(pb, n, ANSWER)
    return _num(pb, n, hits, True)


@njit(cache=True)
def _brackets(pb, st, d, lex, cat_off):
    """Bracket codes 2*kind (open) / 2*kind+1 (close) map to pieces BR_FIRST + code; -1 is a word."""
    kinds = min(d, 4)
    max_depth = d + 1
    opens_left = 1 + _below(st, d + 2)
    seq = np.empty(4 * (d + 3), np.int64)
    words = np.empty(4 * (d + 3), np.int64)
    stack = np.empty(d + 4, np.int64)  # a corrupted close turned open lets the check go 2 deeper
    m = 0
    depth = 0
    while opens_left > 0 or depth > 0:
        can_open = opens_left > 0 and depth < max_depth
        if can_open and (depth == 0 or _below(st, 2) == 0):
            kind = _below(st, kinds)
            stack[depth] = kind
            depth += 1
            opens_left -= 1
            seq[m] = 2 * kind
            m += 1
            if _unif(st) < 0.3:
                seq[m] = -1
                words[m] = _pick(st, cat_off, NOUN)
                m += 1
        else:
            depth -= 1
            seq[m] = 2 * stack[depth] + 1
            m += 1
    if _below(st, 2) == 1:  # corrupt one bracket: any other bracket in play
        pos = _below(st, m)
        while seq[pos] < 0:
            pos = _below(st, m)
        seq[pos] = (seq[pos] + 1 + _below(st, 2 * kinds - 1)) % (2 * kinds)
    n = _put(pb, 0, BRACKETS)
    for j in range(m):
        n = _put(pb, n, lex[words[j]] if seq[j] < 0 else BR_FIRST + seq[j])
    depth = 0
    valid = True
    for j in range(m):
        c = seq[j]
        if c < 0:
            continue
        if c % 2 == 0:
            stack[depth] = c // 2
            depth += 1
        elif depth == 0 or stack[depth - 1] != c // 2:
            valid = False
            break
        else:
            depth -= 1
    n = _put(pb, n, VALID)
    return _put(pb, n, YES if valid and depth == 0 else NO)


@njit(cache=True)
def _lo_combine(op, acc, v, first):
    if first:
        return v
    if op == 0:
        return max(acc, v)
    if op == 1:
        return min(acc, v)
    return acc + v


@njit(cache=True)
def _lo_open(pb, n, st, first):
    op = _below(st, 3)
    return _put(pb, n, (LO_OPEN if first else LO_OPEN_SP) + op), op


@njit(cache=True)
def _lo_close(pb, n):
    """Close a list; consecutive closing brackets form one piece ("]]"), as BPE pre-tokenizers see them."""
    if pb[n - 1] == LO_CLOSE or pb[n - 1] == LO_CLOSE + 1:
        pb[n - 1] += 1
        return n
    return _put(pb, n, LO_CLOSE)


@njit(cache=True)
def _lo_digit(pb, n, st):
    v = _below(st, 10)
    n = _put(pb, n, SP)
    return _put(pb, n, DIG + v), v


@njit(cache=True)
def _lo_flat(pb, n, st, lo, span, first):
    n, op = _lo_open(pb, n, st, first)
    acc = 0
    for a in range(lo + _below(st, span)):
        n, v = _lo_digit(pb, n, st)
        acc = _lo_combine(op, acc, v, a == 0)
    return _lo_close(pb, n), acc


@njit(cache=True)
def _lo_nested1(pb, n, st, lo, span, first):
    """A list whose arguments are digits or flat lists, at least one of them a list."""
    n, op = _lo_open(pb, n, st, first)
    nargs = lo + _below(st, span)
    forced = _below(st, nargs)
    acc = 0
    for a in range(nargs):
        if a == forced or _unif(st) < 0.3:
            n, v = _lo_flat(pb, n, st, lo, span, False)
        else:
            n, v = _lo_digit(pb, n, st)
        acc = _lo_combine(op, acc, v, a == 0)
    return _lo_close(pb, n), acc


@njit(cache=True)
def _lo_nested2(pb, n, st, lo, span):
    """A list with at least one argument nested two deep."""
    n, op = _lo_open(pb, n, st, True)
    nargs = lo + _below(st, span)
    forced = _below(st, nargs)
    acc = 0
    for a in range(nargs):
        if a == forced:
            n, v = _lo_nested1(pb, n, st, lo, span, False)
        elif _unif(st) < 0.3:
            n, v = _lo_flat(pb, n, st, lo, span, False)
        else:
            n, v = _lo_digit(pb, n, st)
        acc = _lo_combine(op, acc, v, a == 0)
    return _lo_close(pb, n), acc


@njit(cache=True)
def _listops(pb, st, d):
    if d == 1:
        n, v = _lo_flat(pb, 0, st, 2, 2, True)
    elif d == 2:
        n, v = _lo_flat(pb, 0, st, 3, 3, True)
    elif d == 3:
        n, v = _lo_nested1(pb, 0, st, 2, 2, True)
    elif d == 4:
        n, v = _lo_nested1(pb, 0, st, 2, 3, True)
    else:
        n, v = _lo_nested2(pb, 0, st, 2, 2)
    n = _put(pb, n, EQ)
    return _num(pb, n, v, True)


@njit(cache=True)
def _sorting(pb, st, d):
    k = 3 + _below(st, d + 1)
    vals = np.empty(k, np.int64)
    for j in range(k):
        vals[j] = _below(st, 10 * d + 1)
    desc = d >= 4 and _below(st, 2) == 1
    n = _put(pb, 0, SORT_DESC if desc else SORT)
    for j in range(k):
        n = _num(pb, n, vals[j], True)
    n = _put(pb, n, ARROW)
    for j in range(1, k):  # insertion sort: k <= 8, and far cheaper to compile than np.sort
        v = vals[j]
        i = j - 1
        while i >= 0 and vals[i] > v:
            vals[i + 1] = vals[i]
            i -= 1
        vals[i + 1] = v
    for j in range(k):
        n = _num(pb, n, vals[k - 1 - j] if desc else vals[j], True)
    return n


@njit(cache=True)
def _repeat(pb, st, d, lex, cat_off):
    times = 2 + _below(st, d + 1)
    words = 1
    if d >= 3 and _below(st, 2) == 1:
        words = 2 + _below(st, d - 2)
    phrase = np.empty(words, np.int64)
    for j in range(words):
        phrase[j] = lex[_pick(st, cat_off, NOUN)]
    n = _put(pb, 0, REPEAT)
    n = _num(pb, n, times, True)
    n = _put(pb, n, TIMES_COLON)
    for j in range(words):
        n = _put(pb, n, phrase[j])
    n = _put(pb, n, ARROW)
    for t in range(times):
        if t > 0 and words > 1:
            n = _put(pb, n, BAR)
        for j in range(words):
            n = _put(pb, n, phrase[j])
    return n


@njit(cache=True)
def _recall(pb, st, d, lex, cat_off):
    """Facts "Name verbs object." then a question about one of them; names and activities are distinct."""
    k = 2 + _below(st, 2 * d + 1)
    names = np.empty(k, np.int64)
    acts = np.empty(k, np.int64)
    n = 0
    for j in range(k):
        names[j] = _pick_distinct(st, cat_off, NAME, names, j)
        acts[j] = _pick_distinct(st, cat_off, ACT_V3, acts, j)
        n = _put(pb, n, lex[names[j]] + (1 if j == 0 else 0))
        n = _put(pb, n, lex[acts[j]])
        n = _put(pb, n, lex[acts[j] - cat_off[ACT_V3] + cat_off[ACT_OBJ]])
        n = _put(pb, n, DOT)
    q = _below(st, k)
    form = _below(st, 3) if d >= 3 else 0
    act = acts[q] - cat_off[ACT_V3]
    name, v3 = lex[names[q]], lex[acts[q]]
    base, obj = lex[cat_off[ACT_BASE] + act], lex[cat_off[ACT_OBJ] + act]
    if form == 0:  # What does Carol do? Carol reads novels.
        n = _put(pb, n, WHAT_DOES)
        n = _put(pb, n, name)
        n = _put(pb, n, DO_Q)
        n = _put(pb, n, name)
        n = _put(pb, n, v3)
        n = _put(pb, n, obj)
    elif form == 1:  # Who reads novels? Carol.
        n = _put(pb, n, WHO)
        n = _put(pb, n, v3)
        n = _put(pb, n, obj)
        n = _put(pb, n, QMARK)
        n = _put(pb, n, name)
    else:  # What does Carol read? novels.
        n = _put(pb, n, WHAT_DOES)
        n = _put(pb, n, name)
        n = _put(pb, n, base)
        n = _put(pb, n, QMARK)
        n = _put(pb, n, obj)
    return _put(pb, n, DOT)


@njit(cache=True)
def _rule(pb, n, lex, cat_off, a, b, first):
    n = _put(pb, n, IF if first else IF_SP)
    n = _put(pb, n, lex[cat_off[PROP] + a])
    n = _put(pb, n, THEN)
    n = _put(pb, n, lex[cat_off[PROP] + b])
    return _put(pb, n, DOT)


@njit(cache=True)
def _fact(pb, n, lex, cat_off, a):
    n = _put(pb, n, lex[cat_off[PROP_CAP] + a])
    return _put(pb, n, DOT)


@njit(cache=True)
def _logic(pb, st, d, lex, cat_off):
    """Rules "If A then B." (premises/conclusions as props[0..]), a fact, and the conclusion they force.

    d1: one rule; d2: plus an unrelated fact; d3: two rules; d4: a chain of two; d5: a chain and a
    distractor rule. Rules come in random order; the answer is the end of the chain the fact starts.
    """
    props = np.empty(5, np.int64)
    for j in range(5):
        props[j] = _pick_distinct(st, cat_off, PROP, props, j)
    props -= cat_off[PROP]
    rule_a = np.empty(3, np.int64)
    rule_b = np.empty(3, np.int64)
    rule_a[0], rule_b[0] = props[0], props[1]
    fact, answer, n_rules = props[0], props[1], 1
    if d == 3:
        rule_a[1], rule_b[1] = props[2], props[3]
        n_rules = 2
        if _below(st, 2) == 1:
            fact, answer = props[2], props[3]
    elif d >= 4:
        rule_a[1], rule_b[1] = props[1], props[2]
        answer, n_rules = props[2], 2
        if d == 5:
            rule_a[2], rule_b[2] = props[3], props[4]
            n_rules = 3
    for j in range(n_rules - 1, 0, -1):  # shuffle the rules
        s = _below(st, j + 1)
        rule_a[j], rule_a[s] = rule_a[s], rule_a[j]
        rule_b[j], rule_b[s] = rule_b[s], rule_b[j]
    n = 0
    for j in range(n_rules):
        n = _rule(pb, n, lex, cat_off, rule_a[j], rule_b[j], j == 0)
    if d == 2 and _below(st, 2) == 1:
        n = _fact(pb, n, lex, cat_off, props[2])
        n = _fact(pb, n, lex, cat_off, fact)
    else:
        n = _fact(pb, n, lex, cat_off, fact)
        if d == 2:
            n = _fact(pb, n, lex, cat_off, props[2])
    n = _put(pb, n, THEREFORE)
    n = _put(pb, n, lex[cat_off[PROP] + answer])
    return _put(pb, n, DOT)


@njit(cache=True)
def _expr(pb, n, a, b, product):
    n = _num(pb, n, a, True)
    n = _put(pb, n, TIMES_TIGHT if product else PLUS_TIGHT)
    return _num(pb, n, b, False)


@njit(cache=True)
def _comparison(pb, st, d):
    if d == 4:  # Find the largest: 665, 366, 398. Answer: 665
        largest = _below(st, 2) == 0
        n = _put(pb, 0, LARGEST if largest else SMALLEST)
        best = 0
        for j in range(3 + _below(st, 3)):
            v = 1 + _below(st, 999)
            if j > 0:
                n = _put(pb, n, COMMA)
                best = max(best, v) if largest else min(best, v)
            else:
                best = v
            n = _num(pb, n, v, True)
        n = _put(pb, n, DOT)
        n = _put(pb, n, ANSWER)
        return _num(pb, n, best, True)
    bigger = d <= 2 or _below(st, 2) == 0
    n = _put(pb, 0, BIGGER if bigger else SMALLER)
    if d == 5:  # Which is bigger: 39+42 or 7*10? 39+42
        prod = np.empty(2, np.bool_)
        xa = np.empty(2, np.int64)
        xb = np.empty(2, np.int64)
        for j in range(2):
            prod[j] = _below(st, 2) == 1
            if prod[j]:
                xa[j], xb[j] = 2 + _below(st, 11), 2 + _below(st, 11)
            else:
                xa[j], xb[j] = 1 + _below(st, 99), 1 + _below(st, 99)
        va = xa[0] * xb[0] if prod[0] else xa[0] + xb[0]
        if _below(st, 4) == 0:  # make the two sides equal in value
            prod[1] = False
            xa[1] = 1 + _below(st, va - 1)
            xb[1] = va - xa[1]
        vb = xa[1] * xb[1] if prod[1] else xa[1] + xb[1]
        n = _expr(pb, n, xa[0], xb[0], prod[0])
        n = _put(pb, n, OR)
        n = _expr(pb, n, xa[1], xb[1], prod[1])
        n = _put(pb, n, QMARK)
        if va == vb:
            return _put(pb, n, EQUAL)
        w = 0 if (va > vb) == bigger else 1
        return _expr(pb, n, xa[w], xb[w], prod[w])
    hi = 20 if d == 1 else (100 if d == 2 else 500)
    a = 1 + _below(st, hi)
    b = 1 + _below(st, hi - 1)
    if b >= a:  # b uniform over 1..hi without a
        b += 1
    n = _num(pb, n, a, True)
    n = _put(pb, n, OR)
    n = _num(pb, n, b, True)
    n = _put(pb, n, QMARK)
    return _num(pb, n, max(a, b) if bigger else min(a, b), True)


@njit(cache=True)
def _sample(pb, st, task, d, lex, cat_off):
    """Write one sample of the task at integer difficulty d into pb; return its piece count."""
    if task == 0:
        return _arithmetic(pb, st, d)
    if task == 1:
        return _counting(pb, st, d, lex, cat_off)
    if task == 2:
        return _brackets(pb, st, d, lex, cat_off)
    if task == 3:
        return _listops(pb, st, d)
    if task == 4:
        return _sorting(pb, st, d)
    if task == 5:
        return _repeat(pb, st, d, lex, cat_off)
    if task == 6:
        return _recall(pb, st, d, lex, cat_off)
    if task == 7:
        return _logic(pb, st, d, lex, cat_off)
    return _comparison(pb, st, d)


@njit(cache=True)
def _start(st, seed, i, task, difficulty):
    """Seed sample i's stream; draw its task (task < 0: uniform) and integer difficulty."""
    _seed(st, seed, i)
    if task < 0:
        task = _below(st, N_TASKS)
    d = np.int64(np.floor(difficulty))
    if _unif(st) < difficulty - d:
        d += 1
    return task, d


@njit(cache=True)
def sample_pieces(seed, n, task, difficulty, lex, cat_off):
    """Pieces of samples 0..n-1 as (flat piece ids, offsets[n+1]); task < 0 mixes tasks like token_stream."""
    pb = np.empty(MAX_PIECES, np.int32)
    st = np.empty(1, np.uint64)
    offsets = np.zeros(n + 1, np.int64)
    flat = np.empty(64 * n + MAX_PIECES, np.int32)
    for i in range(n):
        t, d = _start(st, seed, i, task, difficulty)
        m = _sample(pb, st, t, d, lex, cat_off)
        start = offsets[i]
        if start + m > flat.shape[0]:
            grown = np.empty(2 * flat.shape[0] + m, np.int32)
            grown[:start] = flat[:start]
            flat = grown
        flat[start:start + m] = pb[:m]
        offsets[i + 1] = start + m
    return flat[:offsets[n]], offsets


@njit(cache=True)
def token_stream(out, seed, task, difficulty, lex, cat_off, tok_flat, tok_off, eos):
    """Fill out with the token ids of samples 0, 1, ... of one task (task < 0: tasks mixed), each followed by eos."""
    pb = np.empty(MAX_PIECES, np.int32)
    st = np.empty(1, np.uint64)
    size = out.shape[0]
    pos = 0
    i = 0
    while pos < size:
        t, d = _start(st, seed, i, task, difficulty)
        m = _sample(pb, st, t, d, lex, cat_off)
        for j in range(m):
            p = pb[j]
            for k in range(tok_off[p], tok_off[p + 1]):
                if pos < size:
                    out[pos] = tok_flat[k]
                    pos += 1
        if pos < size:
            out[pos] = eos
            pos += 1
        i += 1
    return i
