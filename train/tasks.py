"""The checkable tasks the tiny DiffuLLaMA is trained and evaluated on.

Every problem is (task, prompt, answer, suffix): the model sees BOS + prompt, a fixed-length
answer region, then the suffix (empty except for infilling). Answers shorter than their task's
region are padded with EOS, so `dlm-run -n <region>` is exactly the training layout. A problem
belongs to the held-out test split when a hash of its text says so: training never draws it,
whatever the seed.

Tasks (answer region in tokens; the LLaMA tokenizer writes each digit as its own token):
  copy     "copy 58213:"          -> " 58213"      3-6 digits
  reverse  "reverse 58213:"       -> " 31285"      3-6 digits
  sort     "sort 5821393:"        -> " 1233589"    4-7 digits
  add      "347+85="              -> " 432"        1-3 digit operands (carries)
  recall   "k=5 q=2 m=8; q?"      -> " 2"          3-5 keys
  infill   "rev:" ? "= 1284"      -> " 4821"       the middle is fixed by the suffix's digits
           and the prefix's operation (rev/copy): a left-to-right model cannot know it
  english  "Today is a wonderful day," -> " the cat sleeps under the tree."  templated text,
           checked by its grammar, not by one answer
"""
import hashlib
import random
import re

TASKS = ["copy", "reverse", "sort", "add", "recall", "infill", "english"]

# Answer regions in tokens (leading "▁" + digits/words + EOS padding); encode_problem asserts they fit.
REGION = {"copy": 8, "reverse": 8, "sort": 9, "add": 6, "recall": 3, "infill": 5, "english": 12}

ADJ = ["wonderful", "sunny", "quiet", "cold", "warm", "bright", "long", "happy"]
SUBJ = ["cat", "dog", "bird", "child", "old man", "girl", "boy", "horse"]
VERB = ["sleeps", "sits", "runs", "plays", "sings", "walks", "waits", "reads"]
PREP = ["under", "near", "in", "by", "behind"]
PLACE = ["tree", "river", "house", "garden", "park", "window", "road", "hill"]
OPENERS = ["Today is a {adj} day,", "It was a {adj} morning,", "On a {adj} evening,", "Every {adj} day,"]
KEYS = "abcdefghjkmnpqrstuvwxyz"

ENGLISH_RE = re.compile(
    r"^the (%s) (%s) (%s) the (%s)\.$" % ("|".join(SUBJ), "|".join(VERB), "|".join(PREP), "|".join(PLACE)))


def digits(rng, lo, hi):
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(lo, hi)))


def make(task, rng):
    """One problem of `task`: (prompt, answer, suffix)."""
    if task == "copy":
        d = digits(rng, 3, 6)
        return f"copy {d}:", f" {d}", ""
    if task == "reverse":
        d = digits(rng, 3, 6)
        return f"reverse {d}:", f" {d[::-1]}", ""
    if task == "sort":
        d = digits(rng, 4, 7)
        return f"sort {d}:", " " + "".join(sorted(d)), ""
    if task == "add":
        a, b = rng.randint(0, 10 ** rng.randint(1, 3) - 1), rng.randint(0, 10 ** rng.randint(1, 3) - 1)
        return f"{a}+{b}=", f" {a + b}", ""
    if task == "recall":
        keys = rng.sample(KEYS, rng.randint(3, 5))
        vals = [rng.choice("0123456789") for _ in keys]
        q = rng.randrange(len(keys))
        ctx = " ".join(f"{k}={v}" for k, v in zip(keys, vals))
        return f"{ctx}; {keys[q]}?", f" {vals[q]}", ""
    if task == "infill":
        d = "".join(rng.choice("0123456789") for _ in range(4))
        op = rng.choice(["rev", "copy"])
        shown = d[::-1] if op == "rev" else d
        return f"{op}:", f" {d}", f"= {shown}"
    if task == "english":
        opener = rng.choice(OPENERS).format(adj=rng.choice(ADJ))
        s = f" the {rng.choice(SUBJ)} {rng.choice(VERB)} {rng.choice(PREP)} the {rng.choice(PLACE)}."
        return opener, s, ""
    raise ValueError(task)


def is_test(task, prompt, suffix):
    """The held-out split: about one problem in eight, decided by the problem's text alone."""
    h = hashlib.sha256(f"{task}\x00{prompt}\x00{suffix}".encode()).digest()
    return h[0] % 8 == 0


def correct(task, prompt, answer, suffix, output):
    """Is `output` (the decoded answer region, up to EOS) right?"""
    out = output.strip()
    if task == "english":
        return ENGLISH_RE.match(out) is not None
    return out == answer.strip()


def draw(task, rng, split):
    """A problem of `task` from `split` ("train" or "test")."""
    while True:
        p, a, s = make(task, rng)
        # English has no held-out answers to hide: every sentence of the grammar is fair game.
        if task == "english" or is_test(task, p, s) == (split == "test"):
            return p, a, s


def encode_problem(tok, task, prompt, answer, suffix, bos=1, eos=2):
    """Token ids as dlm-run lays them out: (prefix with BOS, answer region padded with EOS, suffix)."""
    prefix = tok.encode(prompt).ids
    full = tok.encode(prompt + answer).ids
    assert full[:len(prefix)] == prefix and prefix[0] == bos, (prompt, answer)
    ans = full[len(prefix):]
    region = REGION[task]
    assert len(ans) <= region, (task, prompt, answer, len(ans))
    ans = ans + [eos] * (region - len(ans))
    suf = tok.encode(suffix).ids[1:] if suffix else []
    return prefix, ans, suf
