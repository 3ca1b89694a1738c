"""Judge stubs named ``tests.judge_stubs:NAME`` on the command line (the repository root is the
working directory of the test run, so ``tests`` is importable)."""


def always_a(prompts, firsts, seconds):
    """A maximally position-biased pairwise judge: the response shown first always wins."""
    return [1.0] * len(prompts)


def mostly_a(prompts, firsts, seconds):
    """Position-biased but soft: P(first better) = 0.8 whatever the responses."""
    return [0.8] * len(prompts)


def prefers_longer(prompts, firsts, seconds):
    """An order-blind judge: the longer response wins (equal lengths: a tie)."""
    return [
        1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5 for a, b in zip(firsts, seconds)
    ]


def broken(prompts, firsts, seconds):
    return [2.0] * len(prompts)
