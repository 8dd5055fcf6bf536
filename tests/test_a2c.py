"""a2c.py: n-step and GAE targets by hand across a termination and a truncation, its
episode handling on a scripted env, end-to-end runs with a saved model, and the CartPole
threshold with fixed seeds; --critic q: SARSA targets and the advantage by hand, a TD
step that reduces the TD error, the V critic as before, its own CartPole threshold."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import ROOT, load, read_scalars, run_script, train_cli

a2c = load("a2c.py")


# One env, n = 5 steps, γ = 0.5, r_t = t + 1, V(s_t) = 10. The episode terminates after
# t = 1 (V(s_2) = 99 there must not count), the next one is truncated after t = 3 with
# V(true last observation) = 8, the rollout ends with V(s_5) = 20.
# δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t) = (−4, −8, −2, −2, 5).
BY_HAND = {
    # λ = 1, the n-step return: R ← r_i + γR backwards from 0 after a termination,
    # V(s_final) after a truncation, V(s_{t+n}) at the end of the rollout
    1.0: [1 + 0.5 * 2, 2, 3 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8, 5 + 0.5 * 20],
    # λ = 0.5: Â_t = δ_t + γλ Â_{t+1} within an episode, R_t = Â_t + V(s_t)
    0.5: [10 - 4 + 0.25 * -8, 10 - 8, 10 - 2 + 0.25 * -2, 10 - 2, 10 + 5],
    # λ = 0: R_t = r_t + γ (1 − term_t) V(s_{t+1}), the one-step actor-critic's target
    0.0: [1 + 0.5 * 10, 2, 3 + 0.5 * 10, 4 + 0.5 * 8, 5 + 0.5 * 20],
}


@pytest.mark.parametrize("lam", BY_HAND)
def test_a2c_targets_by_hand_across_termination_and_truncation(lam):
    rewards = torch.arange(1.0, 6.0).unsqueeze(1)
    values = torch.full((5, 1), 10.0)
    # V(s_{t+1}) of the same episode
    next_values = torch.tensor([[10.0], [99.0], [10.0], [8.0], [20.0]])
    terminations = torch.tensor([[0.0], [1.0], [0.0], [0.0], [0.0]])
    # ended: terminated or truncated
    dones = torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0]])
    advantages = a2c.compute_gae(
        rewards, values, next_values, terminations, dones, 0.5, lam
    )
    returns = advantages + values
    torch.testing.assert_close(returns.squeeze(1), torch.tensor(BY_HAND[lam]))


class CountingEnv(gym.Env):
    """obs = (steps taken in this episode, episode number). Each episode terminates
    after 2-6 steps (drawn from the env's seeded RNG), unless the TimeLimit of 4 steps
    truncates it first."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        self.end = int(self.np_random.integers(2, 7))
        return np.array([0, self.episode], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.t, self.episode], np.float32)
        return obs, 1.0, self.t == self.end, False, {}


gym.register("A2CTestCounting-v0", entry_point=CountingEnv, max_episode_steps=4)


def test_a2c_rollout_pairs_each_state_with_its_own_successor(monkeypatch, tmp_path):
    module = load("a2c.py")
    seen = {}
    value = module.Agent.value
    compute_gae = module.compute_gae

    def spy_value(self, obs):
        # the update's one pass: (s_t for all t, then s_{t+1} for all t)
        seen["obs"] = obs.clone()
        return value(self, obs)

    def spy_gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
        seen.update(term=terminations.clone(), done=dones.clone())
        return compute_gae(
            rewards, values, next_values, terminations, dones, gamma, gae_lambda
        )

    monkeypatch.setattr(module.Agent, "value", spy_value)
    monkeypatch.setattr(module, "compute_gae", spy_gae)
    argv = ["--env-id", "A2CTestCounting-v0", "--num-envs", "3", "--num-steps", "16"]
    argv += ["--total-timesteps", "48", "--eval-episodes", "0"]
    train_cli(module, argv + ["--log-dir", str(tmp_path), "--device", "cpu"])
    obs, next_obs = seen["obs"].split(16)
    # s_{t+1} is one step further in the same episode, also at the truncations (the true
    # last observation)
    torch.testing.assert_close(next_obs, obs + torch.tensor([1.0, 0.0]))
    ended, term = seen["done"].bool(), seen["term"].bool()
    truncated = ended & ~term
    assert term.any() and truncated.any() and not (term & ~ended).any()
    # truncated exactly at the TimeLimit
    assert (next_obs[..., 0][truncated] == 4).all()
    # a new episode starts after each end, and only there
    assert (obs[1:, :, 0][ended[:-1]] == 0).all()
    assert (obs[1:, :, 0][~ended[:-1]] > 0).all()


def check_saved_run(script: str, result: dict, env_id: str, tmp_path) -> dict:
    """A finished run logged returns, SPS and its evaluation, saved the model with its
    Args, and evaluating the saved file without training reproduces the evaluation at
    the end of training. Returns the checkpoint."""
    tags = read_scalars(result["run_dir"])
    for tag in (
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/SPS",
        "eval/episodic_return",
    ):
        assert tag in tags, tag
    ckpt = torch.load(result["model_path"])
    assert ckpt["args"]["env_id"] == env_id
    argv = ["--eval-model", result["model_path"], "--eval-episodes", "2"]
    proc = run_script(ROOT / script, argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"eval/episodic_return {result['eval_return']:.2f}" in proc.stdout
    return ckpt


SMOKE = {
    "CartPole-v1": ["--num-envs", "2", "--gae-lambda", "0.9", "--ent-coef", "0.01"],
    "InvertedPendulum-v5": ["--optimizer", "adam"],
}


@pytest.mark.parametrize("env_id", SMOKE)
def test_a2c_smoke_saves_logs_and_evaluates_from_file(env_id, tmp_path):
    argv = ["--env-id", env_id, "--total-timesteps", "640", "--eval-episodes", "2"]
    argv += ["--log-every", "100", "--save-model", "--log-dir", str(tmp_path)]
    argv += ["--device", "cpu"] + SMOKE[env_id]
    result = train_cli("a2c.py", argv)
    ckpt = check_saved_run("a2c.py", result, env_id, tmp_path)
    tags = read_scalars(result["run_dir"])
    for tag in (
        "losses/policy_loss",
        "losses/value_loss",
        "diagnostics/entropy",
        "diagnostics/explained_variance",
        "diagnostics/advantage_mean",
        "diagnostics/advantage_std",
    ):
        assert tag in tags, tag
    if env_id == "InvertedPendulum-v5":
        # the observation statistics travel with the model
        assert ckpt["model"]["obs_rms.count"] > 500
        assert ckpt["model"]["obs_rms.var"].ne(1.0).all()


# Held-out seeds: the defaults were calibrated on seeds 1 and 2, and checked on seeds
# 1-10 (benchmarks/results/seeds) and 31-50 (19/20); seeds 51-70 played no part
# (19/20, benchmarks/results/seeds/trpo-a2c-seeds.md).
@pytest.mark.regression
@pytest.mark.parametrize("seed", [51, 52])
def test_a2c_solves_cartpole_in_200k_steps(seed, tmp_path):
    argv = ["--seed", str(seed), "--log-dir", str(tmp_path), "--device", "cpu"]
    result = train_cli("a2c.py", argv)
    assert result["steps"] <= 200_000
    assert result["eval_return"] >= 475


# ── --critic q: the Q actor-critic with a one-step SARSA critic ──
def q_agent(act_space, obs_dim=1):
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    return obs_space, a2c.Agent(obs_space, act_space, 8, False, "q")


def test_a2c_q_sarsa_targets_by_hand_across_termination_and_truncation():
    # Q_w(s, ·) = (s, 2s); π picks action 1 (logits 0 and 50); every recorded a_t is 0.
    # One env, n = 4, γ = 0.5, r_t = 1: t = 1 terminates, t = 2 is truncated with true
    # last observation 7 (the next row starts a new episode at 20), t = 3 ends the
    # rollout.
    obs_space, agent = q_agent(gym.spaces.Discrete(2))
    agent.critic = torch.nn.Linear(1, 2, bias=False)
    agent.critic.weight.data = torch.tensor([[1.0], [2.0]])
    agent.actor = torch.nn.Linear(1, 2)
    agent.actor.weight.data.zero_()
    agent.actor.bias.data = torch.tensor([0.0, 50.0])
    buf = a2c.Rollout(4, 1, obs_space, gym.spaces.Discrete(2), "cpu")
    buf.obs[:, 0, 0] = [1, 2, 5, 20]
    buf.next_obs[:, 0, 0] = [2, 3, 7, 21]
    buf.rewards[:] = 1
    buf.terminations[:, 0] = [0, 1, 0, 0]
    buf.dones[:, 0] = [0, 1, 1, 0]
    all_obs = torch.as_tensor(np.concatenate([buf.obs, buf.next_obs]))
    actions = torch.as_tensor(buf.actions)
    args = a2c.Args(critic="q", gamma=0.5)
    q_sa, psi, y = a2c.q_estimate(agent, all_obs, actions, buf, args)
    by_hand = [
        # the episode goes on: a′ = a_1 = 0, the action taken next, Q(2, 0) = 2
        1 + 0.5 * 2,
        # terminal: y = r
        1,
        # truncated: a′ ~ π at the true last observation 7, Q(7, 1) = 14
        1 + 0.5 * 14,
        # the rollout's last step: a′ ~ π at s_4 = 21, Q(21, 1) = 42
        1 + 0.5 * 42,
    ]
    torch.testing.assert_close(y.squeeze(1), torch.tensor(by_hand))
    torch.testing.assert_close(q_sa.squeeze(1), torch.tensor([1.0, 2, 5, 20]))
    # Ψ = Q(s, 0) − Σ_b π(b|s) Q(s, b) = s − 2s with π(1|s) = 1 − e^−50
    torch.testing.assert_close(psi.squeeze(1), -torch.tensor([1.0, 2, 5, 20]))
    assert not y.requires_grad and not psi.requires_grad and q_sa.requires_grad


def test_a2c_q_discrete_advantage_by_hand_and_its_expectation():
    # π = (0.2, 0.3, 0.5), Q = (1, 3, 5): V = 0.2 + 0.9 + 2.5 = 3.6
    q_all = torch.tensor([[1.0, 3.0, 5.0], [1.0, 3.0, 5.0]])
    logits = torch.tensor([0.2, 0.3, 0.5]).log().expand(2, 3)
    psi = a2c.discrete_q_advantage(q_all, logits, torch.tensor([1, 2]))
    torch.testing.assert_close(psi, torch.tensor([3 - 3.6, 5 - 3.6]))
    # Σ_a π(a|s) ∇_z log π(a|s) Ψ(a) = Σ_a π(a|s) ∇_z log π(a|s) Q(a): the baseline
    # changes no expected gradient (exact sums over the actions, by autograd)
    z = torch.tensor([0.3, -1.2, 0.7], requires_grad=True)
    q = torch.tensor([2.0, -1.0, 4.0])
    actions = torch.arange(3)

    def expected_gradient(weights):
        logp = z.log_softmax(-1)
        pi = logp.exp().detach()
        return torch.autograd.grad((pi * logp * weights).sum(), z)[0]

    psi = a2c.discrete_q_advantage(q.expand(3, 3), z.detach().expand(3, 3), actions)
    torch.testing.assert_close(expected_gradient(psi), expected_gradient(q))
    assert not torch.allclose(psi, q)


@pytest.mark.parametrize("space", ["discrete", "box"])
def test_a2c_q_critic_step_reduces_the_td_error(space):
    torch.manual_seed(0)
    if space == "discrete":
        act_space = gym.spaces.Discrete(3)
    else:
        act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs_space, agent = q_agent(act_space, obs_dim=4)
    buf = a2c.Rollout(6, 3, obs_space, act_space, "cpu")
    rng = np.random.default_rng(0)
    buf.obs[:] = rng.normal(size=buf.obs.shape)
    buf.next_obs[:] = rng.normal(size=buf.obs.shape)
    buf.actions[:] = agent.sample(torch.as_tensor(buf.obs)).detach().numpy()
    buf.rewards[:] = rng.normal(size=buf.rewards.shape)
    buf.terminations[2, 0] = 1
    buf.dones[2, 0] = 1
    buf.dones[4, 1] = 1
    all_obs = torch.as_tensor(np.concatenate([buf.obs, buf.next_obs]))
    actions = torch.as_tensor(buf.actions)
    args = a2c.Args(critic="q", gamma=0.9)
    q_sa, _, y = a2c.q_estimate(agent, all_obs, actions, buf, args)
    before = a2c.value_loss(q_sa, y)
    before.backward()
    with torch.no_grad():
        for p in agent.critic.parameters():
            p -= 1e-3 * p.grad
    # the same fixed targets: the step moved Q_w(s_t, a_t) towards them
    after = a2c.value_loss(agent.q_value(all_obs[:6], actions), y)
    assert after < before
    assert all(p.grad is None for p in agent.actor.parameters())


def test_a2c_v_critic_gives_the_scalars_it_gave_before_the_q_critic(tmp_path):
    # recorded from a2c.py before --critic existed (seed 7, the CartPole smoke run)
    argv = ["--env-id", "CartPole-v1", "--total-timesteps", "640", "--seed", "7"]
    argv += ["--eval-episodes", "2", "--log-every", "100", "--device", "cpu"]
    argv += ["--num-envs", "2", "--gae-lambda", "0.9", "--ent-coef", "0.01"]
    result = train_cli("a2c.py", argv + ["--log-dir", str(tmp_path)])
    tags = read_scalars(result["run_dir"])
    assert tags["losses/policy_loss"][-1] == pytest.approx((610, 0.3270382583), 1e-6)
    assert tags["losses/value_loss"][-1] == pytest.approx((610, 6.5555405617), 1e-6)
    assert result["eval_return"] == 40.0


@pytest.mark.parametrize("env_id", SMOKE)
def test_a2c_q_critic_smoke_saves_and_evaluates_from_file(env_id, tmp_path):
    argv = ["--env-id", env_id, "--total-timesteps", "640", "--eval-episodes", "2"]
    argv += ["--log-every", "100", "--save-model", "--log-dir", str(tmp_path)]
    argv += ["--device", "cpu", "--critic", "q"] + SMOKE[env_id]
    result = train_cli("a2c.py", argv)
    ckpt = check_saved_run("a2c.py", result, env_id, tmp_path)
    assert ckpt["args"]["critic"] == "q"
    # Discrete: Q_w(s, ·) has one output per action; Box: Q_w takes concat(s, a)
    env = gym.make(env_id)
    obs_dim = env.observation_space.shape[0]
    if env_id == "CartPole-v1":
        assert ckpt["model"]["critic.4.weight"].shape == (2, 64)
    else:
        assert ckpt["model"]["critic.0.weight"].shape == (64, obs_dim + 1)
    tags = read_scalars(result["run_dir"])
    assert "losses/value_loss" in tags and "diagnostics/advantage_std" in tags


# Held-out seeds 11 and 12: --q-lr-ratio and the Q head's initial scale were chosen on
# seeds 1, 2 and 5, where the SARSA critic's runs averaged ≥ 450 per episode from 40k
# steps on; a critic no faster than the actor (--q-lr-ratio 1) left seeds 2 and 5 at
# about 9 (one action only) from 10k steps on.
@pytest.mark.regression
@pytest.mark.parametrize("seed", [11, 12])
def test_a2c_q_critic_balances_cartpole_in_60k_steps(seed, tmp_path):
    argv = ["--critic", "q", "--total-timesteps", "60000", "--seed", str(seed)]
    result = train_cli("a2c.py", argv + ["--log-dir", str(tmp_path), "--device", "cpu"])
    assert result["eval_return"] >= 200
