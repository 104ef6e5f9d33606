"""PPO arithmetic against plain, loop-by-loop reference computations."""

import math

import pytest
import torch

from alignment.rlhf.ppo_math import (
    KLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    logprobs_of,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

torch.manual_seed(0)
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float)


def real(values, mask=MASK):
    return [
        [v for v, m in zip(row, mrow) if m] for row, mrow in zip(values.tolist(), mask.tolist())
    ]


def test_gae_matches_textbook_recursion():
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards * MASK, values, MASK, gamma, lam)
    for row, (r, v) in enumerate(zip(real(rewards), real(values))):
        expected, running = [0.0] * len(r), 0.0
        for t in reversed(range(len(r))):
            next_v = v[t + 1] if t + 1 < len(r) else 0.0
            running = r[t] + gamma * next_v - v[t] + gamma * lam * running
            expected[t] = running
        assert advantages[row, : len(r)].tolist() == pytest.approx(expected, abs=1e-5)
        assert returns[row, : len(r)].tolist() == pytest.approx(
            [a + b for a, b in zip(expected, v)], abs=1e-5
        )
    assert (advantages * (1 - MASK)).abs().sum() == 0 and (returns * (1 - MASK)).abs().sum() == 0


def test_whitening_uses_real_tokens_only():
    values = torch.randn(3, 5) * 3 + 2
    whitened = masked_whiten(values, MASK)
    flat = [x for row in real(whitened) for x in row]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)
    assert mean == pytest.approx(0, abs=1e-5) and var == pytest.approx(1, abs=1e-4)
    assert (whitened * (1 - MASK)).abs().sum() == 0
    kept = masked_whiten(values, MASK, shift_mean=False)
    assert masked_mean(kept, MASK).item() == pytest.approx(
        masked_mean(values, MASK).item(), abs=1e-5
    )


def test_kl_estimators_against_formulas():
    logp, ref = torch.randn(3, 5), torch.randn(3, 5)
    k1 = kl_per_token(logp, ref, "k1")
    k3 = kl_per_token(logp, ref, "k3")
    for i in range(3):
        for t in range(5):
            a, b = logp[i, t].item(), ref[i, t].item()
            assert k1[i, t].item() == pytest.approx(a - b, abs=1e-6)
            assert k3[i, t].item() == pytest.approx(math.exp(b - a) - 1 - (b - a), abs=1e-5)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(logp, ref, "k2")


def test_kl_estimators_are_unbiased_on_samples():
    # Sample from p, estimate KL(p||q) with each estimator, compare with the exact value.
    p = torch.distributions.Categorical(logits=torch.tensor([1.0, 0.2, -0.5, 0.0]))
    q = torch.distributions.Categorical(logits=torch.tensor([0.3, 0.3, 0.1, -0.2]))
    x = p.sample((200000,))
    exact = torch.distributions.kl_divergence(p, q).item()
    for estimator in ("k1", "k3"):
        estimate = kl_per_token(p.log_prob(x), q.log_prob(x), estimator).mean().item()
        assert estimate == pytest.approx(exact, abs=0.01)


def test_token_rewards_put_score_on_last_real_token():
    kl = torch.ones(3, 5)
    rewards = token_rewards(torch.tensor([1.0, 2.0, 3.0]), kl, MASK, kl_coef=0.1)
    assert rewards[0].tolist() == pytest.approx([-0.1, -0.1, -0.1, -0.1, 0.9])
    assert rewards[1].tolist() == pytest.approx([-0.1, -0.1, 1.9, 0, 0])
    assert rewards[2].tolist() == pytest.approx([2.9, 0, 0, 0, 0])


def test_clipped_policy_loss_against_loop():
    logp, old, adv = torch.randn(3, 5) * 0.3, torch.randn(3, 5) * 0.3, torch.randn(3, 5)
    loss, stats = policy_loss(logp, old, adv, MASK, clip_range=0.2)
    terms, clipped = [], []
    for row in range(3):
        for t in range(5):
            if MASK[row, t]:
                ratio = math.exp(logp[row, t] - old[row, t])
                a = adv[row, t].item()
                unclipped_term, clipped_term = -a * ratio, -a * min(max(ratio, 0.8), 1.2)
                terms.append(max(unclipped_term, clipped_term))
                clipped.append(clipped_term > unclipped_term)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert stats["clip_fraction"].item() == pytest.approx(sum(clipped) / len(clipped))


def test_ratio_is_one_when_logprobs_match():
    logp, adv = torch.randn(3, 5), torch.randn(3, 5)
    loss, stats = policy_loss(logp, logp.clone(), adv, MASK, clip_range=0.2)
    assert stats["ratio"].item() == pytest.approx(1.0)
    assert stats["clip_fraction"].item() == 0 and stats["approx_kl"].item() == 0
    assert loss.item() == pytest.approx(-masked_mean(adv, MASK).item(), abs=1e-6)


def test_clipped_value_loss_against_loop():
    values, old, returns = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    loss, _ = value_loss(values, old, returns, MASK, clip_range=0.2)
    terms = []
    for row in range(3):
        for t in range(5):
            if MASK[row, t]:
                v, o, g = values[row, t].item(), old[row, t].item(), returns[row, t].item()
                clipped_v = o + min(max(v - o, -0.2), 0.2)
                terms.append(max((v - g) ** 2, (clipped_v - g) ** 2))
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms), abs=1e-5)


def test_entropy_logprobs_and_explained_variance():
    logits = torch.randn(2, 3, 7)
    probs = logits.softmax(-1)
    assert torch.allclose(entropy_from_logits(logits), -(probs * probs.log()).sum(-1), atol=1e-5)
    tokens = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(logprobs_of(logits, tokens, temperature=0.7), expected, atol=1e-6)
    returns = torch.randn(3, 5)
    assert explained_variance(returns, returns, MASK).item() == pytest.approx(1.0)
    mean = masked_mean(returns, MASK)
    assert explained_variance(
        torch.full_like(returns, mean.item()), returns, MASK
    ).item() == pytest.approx(0.0, abs=1e-5)


def test_adaptive_kl_controller_moves_towards_target():
    fixed = KLController(coef=0.1)
    fixed.update(observed_kl=10.0, samples=64)
    assert fixed.coef == 0.1
    adaptive = KLController(coef=0.1, target=1.0, horizon=100)
    adaptive.update(
        observed_kl=2.0, samples=10
    )  # too much KL: the penalty grows (error clipped to 0.2)
    assert adaptive.coef == pytest.approx(0.1 * 1.02)
    adaptive.update(observed_kl=0.5, samples=10)  # too little: it shrinks
    assert adaptive.coef == pytest.approx(0.1 * 1.02 * (1 - 0.2 * 0.1))
