"""Evaluation: did alignment happen, and at what cost?

- ``win_rate``: win rate with ties as half and a 95% interval; length-controlled win rate;
- ``kl``: KL(policy || reference) on the policy's own samples (k1, k3, standard errors);
- ``diversity``: response length, distinct-1/2, unigram entropy;
- ``capability``: alignment tax (held-out log-likelihood, known-answer accuracy) and calibration;
- ``frontier``: reward–KL frontier and over-optimisation plots;
- ``report``: ``report.md`` and ``report.html``;
- ``reward_model``: reward-model accuracy; ``implicit_reward``: DPO implicit-reward accuracy.

Modules are imported by name (``from posttrain.evaluation.win_rate import win_rate``); this package
imports nothing at load time.
"""
