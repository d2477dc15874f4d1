"""The long-answer tasks: answers of 64 to 512 tokens that can still be checked exactly or by a
grammar, for the long-answer DiffuLLaMA (`train/train.py --suite long`).

Every problem is (task, prompt, answer, suffix, region): the model sees BOS + prompt, an answer
region of `region` tokens (one of REGIONS; the answer fills 55-95 % of it, the rest is EOS
padding, as `dlm-run -n <region>` lays out its canvas), then the suffix (infilling only). The
held-out split is decided by a hash of the problem's text, as for the short tasks.

Digits are written in groups of four ("4821 0937 ..."); the LLaMA tokenizer writes each digit as
its own token and the space before a group as one more, so a group costs five tokens.

  copy     "copy: 4821 0937 5512" -> " 4821 0937 5512"
  reverse  "reverse: 4821 0937 5512" -> " 5512 0937 4821"          the groups in reverse order
  sum      "add up: 37 12 85" -> " 37+12=49; 49+85=134."          each line's left operand is the
           previous line's result: the answer's own earlier part decides the later part
  story    "a story of 3 sentences about a cat:" -> " Once there was a cat named Tom. Tom sits
           near the tree. Tom sings by the river."                 the name is the model's free
           choice, but every later sentence must repeat it: checked by the grammar, the sentence
           count and the name's consistency, not by one answer
  infill   "reverse:" ? "= 5512 0937 4821" -> " 4821 0937 5512"     a long middle fixed by the
           suffix: a left-to-right model cannot know it
"""
import re

from tasks import is_test  # the same held-out rule as the short tasks

TASKS = ["copy", "reverse", "sum", "story", "infill"]
REGIONS = [64, 128, 256, 512]
# Training draws tasks with these weights (sum and infill are the hardest).
WEIGHTS = {"copy": 1.0, "reverse": 1.5, "sum": 2.0, "story": 1.0, "infill": 1.5}

SUBJ = ["cat", "dog", "bird", "horse", "fox", "goat", "duck", "mouse"]
NAMES = ["Tom", "Anna", "Max", "Lily", "Sam", "Rosa", "Ben", "Mia", "Leo", "Ella", "Jack", "Nina"]
VERB = ["sleeps", "sits", "runs", "plays", "sings", "walks", "waits", "reads", "eats", "hides"]
PREP = ["under", "near", "in", "by", "behind"]
PLACE = ["tree", "river", "house", "garden", "park", "window", "road", "hill", "barn", "lake"]

# Token costs used to size an answer before it is encoded (encode_problem checks the real count).
GROUP = 5            # " 4821"
SUM_LINE = 14        # " 134+44=178;" at most
STORY_SENTENCE = 10  # " Tom sits near the tree." at most


def groups(rng, n):
    return " ".join("".join(rng.choice("0123456789") for _ in range(4)) for _ in range(n))


def make(task, rng, region):
    """One problem of `task` whose answer fills 55-95 % of `region` tokens: (prompt, answer, suffix)."""
    fill = rng.uniform(0.55, 0.95) * (region - 1)
    if task in ("copy", "reverse", "infill"):
        g = groups(rng, max(2, int(fill // GROUP)))
        rev = " ".join(reversed(g.split()))
        if task == "copy":
            return f"copy: {g}", f" {g}", ""
        if task == "reverse":
            return f"reverse: {g}", f" {rev}", ""
        return "reverse:", f" {g}", f"= {rev}"
    if task == "sum":
        n = max(2, int(fill // SUM_LINE) + 1)
        terms = [rng.randint(1, 99) for _ in range(n)]
        lines, acc = [], terms[0]
        for t in terms[1:]:
            lines.append(f"{acc}+{t}={acc + t}")
            acc += t
        return "add up: " + " ".join(map(str, terms)), " " + "; ".join(lines) + ".", ""
    if task == "story":
        k = max(2, int(fill // STORY_SENTENCE))
        subj, name = rng.choice(SUBJ), rng.choice(NAMES)
        body = [f"Once there was a {subj} named {name}."]
        for _ in range(k - 1):
            body.append(f"{name} {rng.choice(VERB)} {rng.choice(PREP)} the {rng.choice(PLACE)}.")
        return f"a story of {k} sentences about a {subj}:", " " + " ".join(body), ""
    raise ValueError(task)


def story_pattern(prompt):
    """The regular expression a right story matches: the grammar, the asked number of sentences,
    the asked animal, and one name throughout. No back-references (dlm-eval's regex crate has
    none): one alternative per name."""
    m = re.match(r"^a story of (\d+) sentences about a (\w+):$", prompt)
    k, subj = int(m.group(1)), m.group(2)
    words = "(?:%s) (?:%s) the (?:%s)\\." % ("|".join(VERB), "|".join(PREP), "|".join(PLACE))
    alts = ["%s\\.(?: %s %s){%d}" % (n, n, words, k - 1) for n in NAMES]
    return "^Once there was a %s named (?:%s)$" % (subj, "|".join(alts))


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


def draw(task, rng, split, region):
    """A problem of `task` and answer region `region` from `split` ("train" or "test")."""
    while True:
        p, a, s = make(task, rng, region)
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
