"""sac_continuous.py: the tanh-Gaussian log-prob against the change of variables, the
soft target and α loss by hand, the stacked twin critics against two separate MLPs,
episode handling on a scripted env, end-to-end runs with a saved model, and a learning
threshold with fixed seeds. The helpers at the top serve test_ddpg.py too: both scripts
share the replay loop, so both are checked the same way."""

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ROOT, load, read_scalars, run_script, train_cli

sac = load("sac_continuous.py")


class ChainEnv(gym.Env):
    """obs = (step in the episode, episode index); even episodes terminate after 3
    steps, odd ones run into the TimeLimit of 5 steps. Asymmetric action bounds; every
    action the env receives is kept in `received`."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    low = np.array([-2.0, 0.0], np.float32)
    high = np.array([1.0, 4.0], np.float32)
    action_space = gym.spaces.Box(low, high)
    received = []

    def __init__(self):
        self.k = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.t = self.k + 1, 0
        return np.array([0, self.k], np.float32), {}

    def step(self, action):
        ChainEnv.received.append(np.array(action))
        self.t += 1
        terminated = self.k % 2 == 0 and self.t == 3
        return np.array([self.t, self.k], np.float32), 1.0, terminated, False, {}


gym.register("OffPolicyTestChain-v0", entry_point=ChainEnv, max_episode_steps=5)


def stored_transitions(script: str, monkeypatch):
    """Run `script` for 16 steps of the chain env and return its replay buffer."""
    module, buffers = load(script), []

    class SpyBuffer(module.ReplayBuffer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            buffers.append(self)

    monkeypatch.setattr(module, "ReplayBuffer", SpyBuffer)
    ChainEnv.received.clear()
    argv = ["--env-id", "OffPolicyTestChain-v0", "--total-timesteps", "16"]
    argv += ["--learning-starts", "8", "--batch-size", "4", "--hidden", "8"]
    argv += ["--eval-episodes", "0", "--device", "cpu"]
    argv += ["--log-dir", "/tmp/offpolicy-test-chain"]
    train_cli(module, argv)
    return buffers[0]


def check_episode_handling(script: str, monkeypatch):
    rb = stored_transitions(script, monkeypatch)
    assert rb.size == 16
    obs, next_obs, term = rb.obs[:16], rb.next_obs[:16], rb.terminations[:16]
    # episodes: steps 0-2 (terminated), 3-7 (truncated), 8-10 (terminated), 11-15
    # (truncated); truncations are stored as non-terminal: they bootstrap
    assert term.nonzero()[0].tolist() == [2, 10]
    # every s' is the true successor of s in the same episode, the last observation of a
    # truncation included
    np.testing.assert_array_equal(next_obs, obs + [1, 0])
    np.testing.assert_array_equal(next_obs[[7, 15]], [[5, 1], [5, 3]])
    # the agent's actions live in [−1, 1]; the env receives them rescaled into its own
    # asymmetric box
    received = np.stack(ChainEnv.received)
    assert np.abs(rb.actions[:16]).max() <= 1.0
    assert (received >= ChainEnv.low).all() and (received <= ChainEnv.high).all()
    expected = [-2.0, 0.0] + (rb.actions[:16] + 1) / 2 * [3.0, 4.0]
    np.testing.assert_allclose(received, expected, atol=1e-6)


def check_smoke(script: str, tags: tuple, tmp_path):
    """A short Hopper-v5 run logs `tags`, saves its actor, and the saved file evaluates
    to the same return."""
    argv = ["--env-id", "Hopper-v5", "--total-timesteps", "500"]
    # --log-every 100: the losses of the updates after step 300 are logged, not only the
    # first update's (before any actor update)
    argv += ["--learning-starts", "300", "--log-every", "100"]
    argv += ["--eval-episodes", "2", "--save-model"]
    argv += ["--log-dir", str(tmp_path), "--device", "cpu"]
    result = train_cli(script, argv)
    logged = read_scalars(result["run_dir"])
    common = ("charts/episodic_return", "charts/SPS", "losses/qf_loss")
    common += ("losses/actor_loss", "diagnostics/q_values", "eval/episodic_return")
    for tag in common + tags:
        assert tag in logged, tag
    assert result["steps"] == 500 and np.isfinite(result["eval_return"])
    eval_argv = ["--eval-model", result["model_path"], "--eval-episodes", "2"]
    proc = run_script(ROOT / script, eval_argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"eval/episodic_return {result['eval_return']:.2f}" in proc.stdout


def test_sac_tanh_logp_matches_change_of_variables():
    g = torch.Generator().manual_seed(0)
    mean, xi = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    log_std = 0.5 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    # |u| < 15, where tanh'(u) = 1 − tanh²(u) is still representable in float64
    u = mean + log_std.exp() * xi
    # p(a) = N(u) / |det ∂a/∂u| with a = tanh(u): the Jacobian of the squash by
    # autograd, not by formula
    expected = []
    for i in range(6):
        jac = torch.autograd.functional.jacobian(torch.tanh, u[i])
        normal = torch.distributions.Normal(mean[i], log_std[i].exp())
        log_normal = normal.log_prob(u[i]).sum()
        expected.append(log_normal - torch.linalg.slogdet(jac).logabsdet)
    logp = sac.tanh_gaussian_logp(xi, log_std, u)
    torch.testing.assert_close(logp, torch.stack(expected))


def test_sac_tanh_logp_is_finite_and_exact_near_the_bounds():
    # |u| large: tanh(u) rounds to ±1 in float32, so the naive log(1 − tanh²u) is −inf
    # there
    u = torch.tensor([[-60.0, -15.0, -9.0], [9.0, 15.0, 60.0]])
    log_std = torch.zeros(2, 3)  # μ = 0, σ = 1: ξ = u
    log_normal = torch.distributions.Normal(0.0, 1.0).log_prob(u.double()).sum(-1)
    naive = log_normal.float() - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    assert torch.isinf(naive).all()
    logp = sac.tanh_gaussian_logp(u, log_std, u)
    # exact in float64: log(1 − tanh²u) = log sech²u = −2 log cosh u
    expected = log_normal + 2 * torch.log(torch.cosh(u.double())).sum(-1)
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(logp.double(), expected, rtol=1e-6, atol=0)


def test_sac_actor_samples_match_their_log_probs():
    torch.manual_seed(0)
    space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    actor = sac.Actor(3, space, hidden=16)
    obs = torch.randn(5, 3)
    actions, logp = actor.sample(obs)
    mean, log_std = actor(obs)
    normal = torch.distributions.Normal(mean, log_std.exp())
    tanh = torch.distributions.TanhTransform()
    dist = torch.distributions.TransformedDistribution(normal, [tanh])
    assert actions.abs().max() < 1
    expected = dist.log_prob(actions).sum(-1)
    torch.testing.assert_close(logp, expected, rtol=1e-4, atol=1e-4)
    # reparameterised: the sample is a differentiable function of θ
    logp.sum().backward()
    for p in actor.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_sac_log_std_is_the_net_output_clamped_to_minus_20_and_2():
    space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    actor = sac.Actor(2, space, hidden=8)
    last = actor.net[-1]
    nn.init.zeros_(last.weight)
    # the three log σ outputs: below, inside and above SB3's bounds [−20, 2]
    raw = torch.tensor([-30.0, -7.5, 3.0])
    with torch.no_grad():
        last.bias[3:] = raw
    _, log_std = actor(torch.randn(4, 2))
    expected = torch.tensor([-20.0, -7.5, 2.0]).expand(4, 3)
    torch.testing.assert_close(log_std, expected)
    # inside the bounds the gradient passes unchanged; at a bound it stops
    log_std.sum().backward()
    torch.testing.assert_close(last.bias.grad[3:], torch.tensor([0.0, 4.0, 0.0]))


@pytest.mark.parametrize("script", ["sac_continuous.py", "ddpg.py"])
def test_sac_scale_action_maps_onto_asymmetric_bounds(script):
    scale_action = load(script).scale_action
    low, high = np.array([-2.0, 0.0, 1.0]), np.array([1.0, 4.0, 1.5])
    a = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, -0.5, 0]])
    expected = np.array([low, high, [-0.5, 2.0, 1.25], [0.25, 1.0, 1.25]])
    np.testing.assert_array_equal(scale_action(a, low, high), expected)
    scaled = scale_action(torch.tensor(a), torch.tensor(low), torch.tensor(high))
    torch.testing.assert_close(scaled, torch.tensor(expected))


def test_sac_twin_q_equals_two_separate_mlps():
    torch.manual_seed(0)
    qf = sac.TwinQ(obs_dim=4, act_dim=2, hidden=8)
    obs, actions = torch.randn(7, 4), torch.randn(7, 2)
    # critic j as an ordinary MLP with the j-th slice of each stacked weight
    for j in range(2):
        layers = [
            nn.Linear(6, 8),
            nn.ReLU(),
            nn.Linear(8, 8),
            nn.ReLU(),
            nn.Linear(8, 1),
        ]
        weights = [qf.w1[j].T, qf.w2[j].T, qf.w3[j]]
        biases = [qf.b1[j, 0], qf.b2[j, 0], qf.b3[j]]
        for layer, w, b in zip(layers[::2], weights, biases):
            layer.weight.data, layer.bias.data = w, b
        expected = nn.Sequential(*layers)(torch.cat([obs, actions], -1)).squeeze(-1)
        torch.testing.assert_close(qf(obs, actions)[j], expected)
    assert not torch.allclose(qf.w2[0], qf.w2[1])  # two independent initialisations


def test_sac_soft_target_by_hand():
    # rows: an ordinary step, a termination, a truncation (stored with term = 0 and its
    # true s')
    rewards = torch.tensor([1.0, 2.0, 3.0])
    terminations = torch.tensor([0.0, 1.0, 0.0])
    # Q_θ⁻_1 and Q_θ⁻_2 at (s', ã')
    next_q1 = torch.tensor([10.0, 4.0, -2.0])
    next_q2 = torch.tensor([8.0, 6.0, -1.0])
    next_logp = torch.tensor([-1.0, 0.5, 2.0])
    targets = (rewards, terminations, next_q1, next_q2, next_logp)
    y = sac.td_target(*targets, alpha=0.1, gamma=0.5)
    # y = r + γ(1 − term)(min_j Q_θ⁻_j − α log π):
    #   1 + 0.5 (8 + 0.1), 2, 3 + 0.5 (−2 − 0.2)
    torch.testing.assert_close(y, torch.tensor([5.05, 2.0, 1.9]))


def test_sac_critic_and_actor_losses_by_hand():
    q1 = torch.tensor([1.0, 2.0])
    q2 = torch.tensor([3.0, 0.0])
    y = torch.tensor([2.0, 2.0])
    expected = torch.tensor((1 + 0) / 2 + (1 + 4) / 2)
    torch.testing.assert_close(sac.critic_loss(q1, q2, y), expected)
    q1_pi = torch.tensor([1.0, 5.0])
    q2_pi = torch.tensor([3.0, 2.0])
    logp = torch.tensor([-1.0, 1.0])
    # Ê[α log π − min_j Q_j] with α = 0.5: ((−0.5 − 1) + (0.5 − 2)) / 2
    loss = sac.actor_loss(q1_pi, q2_pi, logp, 0.5)
    torch.testing.assert_close(loss, torch.tensor(-1.5))


@pytest.mark.parametrize("entropy, alpha_grows", [(3.0, False), (-3.0, True)])
def test_sac_alpha_moves_toward_target_entropy(entropy, alpha_grows):
    target_entropy = -1.0  # H̄ = −|A| for a one-dimensional action
    log_alpha = torch.tensor(0.2).log().requires_grad_()
    logp = torch.full((8,), -entropy)  # −Ê[log π] = entropy
    sac.alpha_loss(log_alpha, logp, target_entropy).backward()
    # ∂J/∂log α = −α Ê[log π + H̄], by hand
    expected = torch.tensor(-0.2 * (-entropy + target_entropy))
    torch.testing.assert_close(log_alpha.grad, expected)
    optimizer = torch.optim.SGD([log_alpha], lr=0.1)
    optimizer.step()
    assert (log_alpha.exp().item() > 0.2) == alpha_grows


def test_sac_episode_handling_on_a_scripted_env(monkeypatch):
    check_episode_handling("sac_continuous.py", monkeypatch)


def test_sac_smoke_hopper_saves_logs_and_evaluates_from_file(tmp_path):
    tags = ("losses/alpha_loss", "diagnostics/alpha", "diagnostics/entropy")
    check_smoke("sac_continuous.py", tags, tmp_path)


# Calibration, these settings at 20k steps: seeds 1-4 all evaluate to 1000; the training
# return first reaches 1000 between 14k and 16k steps (`python sac_continuous.py
# --env-id InvertedPendulum-v5 --seed S` plus these flags). The test runs seeds 5 and 6,
# left out of that calibration.
@pytest.mark.regression
@pytest.mark.parametrize("seed", [5, 6])
def test_sac_balances_inverted_pendulum(seed, tmp_path):
    argv = ["--env-id", "InvertedPendulum-v5", "--seed", str(seed)]
    argv += ["--total-timesteps", "20000", "--learning-starts", "1000"]
    argv += ["--hidden", "64", "--batch-size", "64", "--threads", "1"]
    argv += ["--log-dir", str(tmp_path), "--device", "cpu"]
    assert train_cli("sac_continuous.py", argv)["eval_return"] >= 900
