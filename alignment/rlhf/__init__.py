"""PPO as a small library; the stage `alignment.ppo` reads top to bottom over it.

    roles           policy, reference, reward and value: four adapters on one base model
    rollout         sample answers with the policy and score them with the frozen roles: a Rollout
    learner         behaviour log-probs, KL-penalised GAE advantages, clipped losses, optimizer steps
    checkpoint      resumable checkpoints, written atomically
    ppo_math        the arithmetic (masked statistics, KL estimators, GAE, losses), pure functions
    master_weights  float32 copies the optimizer steps while the adapters compute in the base's dtype

One update is three phases, each reading what the previous one returned and changing none of it:
rollout -> advantages -> train.
"""
