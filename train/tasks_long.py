"""The long-answer tasks: answers of 64 to 512 tokens that can still be checked exactly or by a
grammar, for the long-answer DiffuLLaMA (`train/train.py --suite long`).

Every problem is (task, prompt, answer, suffix, region): the model sees BOS + prompt, an answer
region of `region` tokens (one of REGIONS; the answer fills 55-95 % of it, the rest is EOS
padding, as `dlm-run -n <region>` lays out its canvas), then the suffix (infilling only). The
held-out split is decided by a hash of the problem's text, as for the short tasks.

Numbers have four digits; the LLaMA tokenizer writes each digit as its own token and the space
before a number as one more, so a number costs five tokens. Every task is written so that each
part of the answer follows from the part just before it and the prompt (or suffix): a model
small enough to train in two hours on two cores can learn the rule once and apply it at any
length, while what it writes later still depends on what it wrote earlier.

  count    "count from 4817 to 4822:" -> " 4817 4818 4819 4820 4821 4822"
  step     "count from 4817 by 7 to 4845:" -> " 4817 4824 4831 4838 4845"
                                                     multi-step arithmetic written out, one
                                                     addition with carries per number
  story    "a story of 3 sentences about a cat:" -> " 1. Once there was a cat named Tom.
           2. Tom sits near the tree. 3. Tom sings by the river."
                                                     the name is the model's free choice, but
                                                     every later sentence must repeat it;
                                                     checked by a grammar (sentence count,
                                                     animal, one name), not against one answer
  infill   "count from 4817 by 7:" ? " that ends at 4845." -> " 4817 4824 4831 4838 4845"
                                                     a long middle whose end only the suffix
                                                     says: a left-to-right model cannot know
                                                     where to stop
"""
import re

from tasks import is_test  # the same held-out rule as the short tasks

TASKS = ["count", "step", "story", "infill"]
REGIONS = [64, 128, 256, 512]
# Training draws tasks with these weights (the additions are the harder part).
WEIGHTS = {"count": 1.0, "step": 1.5, "story": 1.0, "infill": 1.5}

SUBJ = ["cat", "dog", "bird", "horse", "fox", "goat", "duck", "mouse"]
NAMES = ["Tom", "Anna", "Max", "Lily", "Sam", "Rosa", "Ben", "Mia", "Leo", "Ella", "Jack", "Nina"]
VERB = ["sleeps", "sits", "runs", "plays", "sings", "walks", "waits", "reads", "eats", "hides"]
PREP = ["under", "near", "in", "by", "behind"]
PLACE = ["tree", "river", "house", "garden", "park", "window", "road", "hill", "barn", "lake"]

# Token costs used to size an answer before it is encoded (encode_problem checks the real count).
NUMBER = 5           # " 4821"
STORY_SENTENCE = 13  # " 12. Tom sleeps behind the window." at most


# How much of its region an answer fills: the held-out split and dlm's evaluations use FILL;
# training may draw from a wider range (`train.py --fill`), so that where the canvas ends says
# little about where the answer ends and the model has to take the length from the prompt.
FILL = (0.55, 0.95)


def make(task, rng, region, fill=FILL):
    """One problem of `task` whose answer fills a share of `region` tokens drawn uniformly from
    `fill` (55-95 % by default): (prompt, answer, suffix)."""
    fill = rng.uniform(*fill) * (region - 1)
    if task in ("count", "step", "infill"):
        n = max(2, int(fill // NUMBER))
        by = 1 if task == "count" else rng.randint(2, 9)
        a = rng.randint(1000, 9999 - by * (n - 1))
        nums = [a + by * i for i in range(n)]
        answer = " " + " ".join(map(str, nums))
        if task == "count":
            return f"count from {a} to {nums[-1]}:", answer, ""
        if task == "step":
            return f"count from {a} by {by} to {nums[-1]}:", answer, ""
        return f"count from {a} by {by}:", answer, f" that ends at {nums[-1]}."
    if task == "story":
        k = max(2, int(fill // STORY_SENTENCE))
        subj, name = rng.choice(SUBJ), rng.choice(NAMES)
        body = [f"1. Once there was a {subj} named {name}."]
        for i in range(2, k + 1):
            body.append(f"{i}. {name} {rng.choice(VERB)} {rng.choice(PREP)} the {rng.choice(PLACE)}.")
        return f"a story of {k} sentences about a {subj}:", " " + " ".join(body), ""
    raise ValueError(task)


def story_pattern(prompt):
    """The regular expression a right story matches: the grammar, the asked number of sentences
    (numbered 1, 2, ... in order is not checked, only that each has a number), the asked animal,
    and one name throughout. No back-references (dlm-eval's regex crate has none): one
    alternative per name."""
    m = re.match(r"^a story of (\d+) sentences about a (\w+):$", prompt)
    k, subj = int(m.group(1)), m.group(2)
    words = "(?:%s) (?:%s) the (?:%s)\\." % ("|".join(VERB), "|".join(PREP), "|".join(PLACE))
    alts = ["%s\\.(?: [0-9]+\\. %s %s){%d}" % (n, n, words, k - 1) for n in NAMES]
    return "^1\\. Once there was a %s named (?:%s)$" % (subj, "|".join(alts))


def story_ok(prompt, out):
    if not re.match(r"^a story of \d+ sentences about a \w+:$", prompt):
        return False
    return re.match(story_pattern(prompt), out) is not None


def correct(task, prompt, answer, suffix, output):
    """Is `output` (the decoded answer region, up to EOS) right?"""
    out = output.strip()
    if task == "story":
        return story_ok(prompt, out)
    return out == answer.strip()


def draw(task, rng, split, region, fill=FILL):
    """A problem of `task` and answer region `region` from `split` ("train" or "test")."""
    while True:
        p, a, s = make(task, rng, region, fill)
        # A story's prompt fixes only the animal and the length: any story of the grammar is
        # fair game, so there is nothing to hold out (as for the short suite's English).
        if task == "story" or is_test(task, p, s) == (split == "test"):
            return p, a, s


def encode_problem(tok, task, prompt, answer, suffix, region, bos=1, eos=2):
    """Token ids as dlm-run lays them out: (prefix with BOS, answer region padded with EOS, suffix)."""
    prefix = tok.encode(prompt).ids
    full = tok.encode(prompt + answer).ids
    assert full[:len(prefix)] == prefix and prefix[0] == bos, (prompt, answer)
    ans = full[len(prefix):]
    assert len(ans) <= region, (task, prompt, answer, len(ans), region)
    ans = ans + [eos] * (region - len(ans))
    suf = tok.encode(suffix).ids[1:] if suffix else []
    return prefix, ans, suf
