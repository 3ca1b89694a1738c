"""Metric names shared by every recipe, the report and the tests (one spelling each)."""

# training machinery
TRAIN_LOSS = "train/loss"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_LR = "train/lr"
TRAIN_TOKENS_PER_S = "train/tokens_per_s"
TRAIN_EPOCH = "train/epoch"
TRAIN_TRUNCATED = "train/truncated"
EVAL_LOSS = "eval/loss"
STEP = "step"
ELAPSED = "time/elapsed_s"

# preference optimisation and reward models
REWARDS_CHOSEN = "rewards/chosen"
REWARDS_REJECTED = "rewards/rejected"
REWARDS_MARGINS = "rewards/margins"
REWARDS_ACCURACIES = "rewards/accuracies"
LOGPS_CHOSEN = "logps/chosen"
LOGPS_REJECTED = "logps/rejected"
EVAL_ACCURACY = "eval/accuracy"

# online RL
OBJECTIVE_SCORES = "objective/scores"
OBJECTIVE_RLHF_REWARD = "objective/rlhf_reward"
OBJECTIVE_KL = "objective/kl"
OBJECTIVE_ENTROPY = "objective/entropy"
POLICY_APPROX_KL = "policy/approx_kl"
POLICY_CLIPFRAC = "policy/clipfrac"
VAL_EXPLAINED_VARIANCE = "val/explained_variance"
VAL_CLIPFRAC = "val/clipfrac"
RESPONSE_LENGTH = "response/length_mean"
RESPONSE_TRUNCATED = "response/truncated_rate"
RESPONSE_EOS = "response/eos_rate"
JUDGE_P_CHOSEN = "judge/p_chosen"  # mean judge confidence in the chosen response of kept pairs
JUDGE_TIES = "judge/ties"  # share of judged pairs with no preference (p = 0.5), left out
JUDGE_POSITION_BIAS = "judge/position_bias_rate"  # share of swapped pairs whose orders disagree
TRAIN_PAIRS = "train/pairs"  # preference pairs in the optimizer step
TRAIN_PAIRS_PER_S = "train/pairs_per_s"  # preference pairs processed per second
EVAL_SCORES = "eval/scores"  # mean score (gold reward / RM) of policy samples on eval prompts
LOSS_POLICY = "loss/policy"  # policy-gradient / clipped surrogate loss (online RL)
LOSS_VALUE = "loss/value"  # clipped value loss (PPO)
LOSS_PTX = "loss/ptx"  # PPO-ptx: NLL (or KL from the reference) per token of its data
OBJECTIVE_KL_COEF = "objective/kl_coef"  # beta in use (adaptive KL controller)
POLICY_EPOCHS = "policy/epochs"  # PPO epochs run on the batch (fewer after an approx-KL stop)
ROLLOUT_LOGP_MISMATCH = "rollout/logp_mismatch"  # max |sampling - training-forward log-prob|
TIME_GENERATION = "time/generation_s"  # seconds sampling responses this step
TIME_SCORING = "time/scoring_s"  # seconds in the reward source this step
TIME_LOGPROBS = "time/logprobs_s"  # seconds computing policy/reference log-probs of the rollout
TIME_TRAINING = "time/training_s"  # seconds in forward/backward/optimizer this step
MEMORY_PEAK_RSS = "memory/peak_rss_mb"  # peak resident memory of the process so far
TRAIN_TIES = "train/ties"  # tied pairs (p = 0.5) in the training data: dropped, or --ties soft
