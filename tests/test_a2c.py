"""a2c.py: n-step and GAE targets by hand across a termination and a truncation, its
episode handling on a scripted env, end-to-end runs with a saved model, and the CartPole
threshold with fixed seeds."""

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


# Held-out seeds: the defaults were calibrated on seeds 1 and 2;
# benchmarks/results/seeds has every script at its defaults on seeds 1-10
# (`python benchmarks/run.py --suite seeds`).
@pytest.mark.regression
@pytest.mark.parametrize("seed", [3, 4])
def test_a2c_solves_cartpole_in_200k_steps(seed, tmp_path):
    argv = ["--seed", str(seed), "--log-dir", str(tmp_path), "--device", "cpu"]
    result = train_cli("a2c.py", argv)
    assert result["steps"] <= 200_000
    assert result["eval_return"] >= 475
