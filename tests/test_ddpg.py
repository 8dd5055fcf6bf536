"""ddpg.py: the target by hand, the actor's gradient against the deterministic policy
gradient assembled from its parts, the Polyak update against its formula, episode
handling on a scripted env, end-to-end runs with a saved model, and learning thresholds
with fixed seeds on InvertedPendulum-v5 and Pendulum-v1."""

import pytest
import torch

from conftest import load, train_cli
from test_sac_continuous import check_episode_handling, check_smoke

ddpg = load("ddpg.py")


def test_ddpg_target_by_hand():
    # rows: an ordinary step, a termination, a truncation (stored with term = 0 and its
    # true s')
    rewards = torch.tensor([1.0, 2.0, 3.0])
    terminations = torch.tensor([0.0, 1.0, 0.0])
    # Q_θ⁻(s', μ_θ⁻(s'))
    next_q = torch.tensor([10.0, 4.0, -2.0])
    y = ddpg.td_target(rewards, terminations, next_q, gamma=0.5)
    # r + γ(1 − term) Q_θ⁻
    torch.testing.assert_close(y, torch.tensor([6.0, 2.0, 2.0]))
    loss = ddpg.critic_loss(torch.tensor([5.0, 2.0, 0.0]), y)
    torch.testing.assert_close(loss, torch.tensor((1 + 0 + 4) / 3))


def test_ddpg_actor_gradient_is_the_deterministic_policy_gradient():
    torch.manual_seed(0)
    space = ddpg.gym.spaces.Box(-1.0, 1.0, (2,), ddpg.np.float32)
    actor = ddpg.Actor(3, space, hidden=8)
    qf = ddpg.QNetwork(3, 2, hidden=8)
    obs = torch.randn(5, 3)
    qf.requires_grad_(False)
    ddpg.actor_loss(qf(obs, actor(obs))).backward()
    # −(1/B) Σ_i ∇_θ μ_θ(s_i)ᵀ ∇_a Q(s_i, a)|_{a=μ_θ(s_i)}, with the two factors
    # computed separately
    params = dict(actor.named_parameters())

    def mu(p):
        return torch.func.functional_call(actor, p, (obs,))

    # ∂μ(s_i)/∂θ
    jac = torch.func.jacrev(mu)(params)
    a = actor(obs).detach().requires_grad_()
    # ∇_a Q(s_i, a) at a = μ(s_i), shape (B, |A|)
    (grad_a,) = torch.autograd.grad(qf(obs, a).sum(), a)
    for name, p in params.items():
        dpg = -torch.einsum("ba,ba...->...", grad_a, jac[name]) / len(obs)
        torch.testing.assert_close(p.grad, dpg)
    # the critic is a constant in the actor's loss
    assert all(w.grad is None for w in qf.parameters())


@pytest.mark.parametrize("tau", [0.25, 1.0])
def test_ddpg_polyak_update_matches_formula(tau):
    torch.manual_seed(0)
    source = ddpg.QNetwork(3, 2, hidden=4)
    target = ddpg.QNetwork(3, 2, hidden=4)
    before = [p.clone() for p in target.parameters()]
    ddpg.polyak_update(target, source, tau)
    for new, old, src in zip(target.parameters(), before, source.parameters()):
        # θ⁻ ← τθ + (1 − τ)θ⁻
        torch.testing.assert_close(new, tau * src + (1 - tau) * old)


def test_ddpg_episode_handling_on_a_scripted_env(monkeypatch):
    check_episode_handling("ddpg.py", monkeypatch)


def test_ddpg_smoke_hopper_saves_logs_and_evaluates_from_file(tmp_path):
    check_smoke("ddpg.py", (), tmp_path)


# The defaults on InvertedPendulum-v5 at 30k steps. Two settings matter. The actor and
# the targets update every step (DDPG's d = 1): a long episode's return reaches Q one
# backup at a time through the Polyak target, whose time constant is 1/τ target
# updates, so with TD3's d = 2 it spreads back half as fast (seeds 1 and 2 first reached
# 1000 at 28k and evaluated to 316 and 1000, against 16k-22k and 1000 for seeds 1-6 at
# d = 1). And 5k random steps, not CleanRL's 25k, leave the budget to learning. d = 1
# was chosen on seeds 1-6; the test runs seeds 7 and 8, left out
# (`python benchmarks/run.py --suite seeds`: seeds 1-10 all evaluate to 1000).
@pytest.mark.regression
@pytest.mark.parametrize("seed", [7, 8])
def test_ddpg_balances_inverted_pendulum(seed, tmp_path):
    argv = [
        *("--env-id", "InvertedPendulum-v5", "--seed", str(seed)),
        *("--total-timesteps", "30000", "--threads", "1"),
        *("--log-dir", str(tmp_path), "--device", "cpu"),
    ]
    assert train_cli("ddpg.py", argv)["eval_return"] >= 900


# Swing-up from hanging down: Pendulum-v1 never terminates and truncates at 200 steps,
# so every target bootstraps. Calibration, these settings at 20k steps: seeds 1-4
# evaluate to -135, -121, -135 and -118 (a random policy scores about -1200). The test
# runs seeds 5 and 6, left out of that calibration.
@pytest.mark.regression
@pytest.mark.parametrize("seed", [5, 6])
def test_ddpg_swings_up_pendulum(seed, tmp_path):
    argv = [
        *("--env-id", "Pendulum-v1", "--seed", str(seed)),
        *("--total-timesteps", "20000", "--learning-starts", "1000"),
        *("--hidden", "64", "--batch-size", "64", "--threads", "1"),
        *("--log-dir", str(tmp_path), "--device", "cpu"),
    ]
    assert train_cli("ddpg.py", argv)["eval_return"] >= -200
