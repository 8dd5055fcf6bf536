"""dqn.py: TD targets, loss, replay buffer, autoreset bookkeeping, target updates,
ε-greedy, bad input and divergence, end to end."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import ROOT, load, read_scalars, run_script, train_cli

dqn = load("dqn.py")


@pytest.mark.parametrize(
    "double, expected",
    [
        # r + γ(1 − term) max_a' Q_θ⁻(s', a'):  1 + 0.9·5,  2 + 0 (terminal),  0 + 0.9·2
        (False, [5.5, 2.0, 1.8]),
        # r + γ(1 − term) Q_θ⁻(s', argmax_a' Q_θ(s', a')): the online net picks
        # a' = 0, 1, 1
        (True, [1 + 0.9 * 1.0, 2.0, 0.9 * 2.0]),
    ],
)
def test_dqn_td_target_by_hand(double, expected):
    rewards = torch.tensor([1.0, 2.0, 0.0])
    terminations = torch.tensor([0.0, 1.0, 0.0])
    next_q_target = torch.tensor([[1.0, 5.0], [3.0, 4.0], [-1.0, 2.0]])
    next_q_online = None
    if double:
        next_q_online = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    y = dqn.td_target(rewards, terminations, next_q_target, 0.9, next_q_online)
    torch.testing.assert_close(y, torch.tensor(expected))


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("huber", (0.5**2 / 2 + (3 - 0.5)) / 2),
        ("mse", (0.5**2 + 3**2) / 2),
    ],
)
def test_dqn_td_loss_by_hand(kind, expected):
    # TD errors 0.5 (quadratic part of Huber) and −3 (linear part)
    loss = dqn.td_loss(torch.tensor([1.5, -1.0]), torch.tensor([1.0, 2.0]), kind)
    assert loss.item() == pytest.approx(expected)


def filled_buffer(capacity: int, num_transitions: int, num_envs: int):
    """A buffer fed transitions 0, 1, 2, ... in batches of num_envs; transition i has
    s = i, a = i % 3, r = 10 i, s' = i + 0.5, term = i % 2 and γ^m = 0.5^(i % 4), so
    every sampled row can be checked for consistency."""
    rb = dqn.ReplayBuffer(capacity, (1,), (), np.int64, torch.device("cpu"))
    for start in range(0, num_transitions, num_envs):
        i = np.arange(start, start + num_envs)
        obs = i[:, None].astype(np.float32)
        rb.add(obs, i % 3, 10.0 * i, obs + 0.5, i % 2, 0.5 ** (i % 4))
    return rb


def test_dqn_replay_buffer_wraps_around_keeping_the_newest():
    rb = filled_buffer(capacity=5, num_transitions=8, num_envs=2)
    # slots 0-4 after writing 0,1 | 2,3 | 4,(wrap)5 | 6,7: the newest five, 3-7, in ring
    # order
    np.testing.assert_array_equal(rb.obs[:, 0], [5, 6, 7, 3, 4])
    np.testing.assert_array_equal(rb.next_obs[:, 0], [5.5, 6.5, 7.5, 3.5, 4.5])
    assert (rb.pos, rb.size) == (3, 5)


def test_dqn_replay_buffer_samples_filled_slots_uniformly():
    np.random.seed(0)
    rb = filled_buffer(capacity=100, num_transitions=4, num_envs=1)
    obs, actions, rewards, next_obs, terminations, discounts = rb.sample(8000)
    i = obs[:, 0].long()
    # never an empty slot (which would read s = 0, s' = 0)
    assert set(i.tolist()) == {0, 1, 2, 3}
    frequencies = torch.bincount(i) / 8000.0
    torch.testing.assert_close(frequencies, torch.full((4,), 0.25), atol=0.02, rtol=0)
    assert torch.equal(actions, i % 3)
    assert torch.equal(rewards, 10.0 * i)
    assert torch.equal(terminations, i % 2.0)
    assert torch.equal(next_obs[:, 0], i + 0.5)
    assert torch.equal(discounts, 0.5 ** (i % 4.0))


class CounterEnv(gym.Env):
    """s = (episode k, step t), r = 10 t + a. Even episodes terminate at t = 3; odd ones
    run into a TimeLimit of 5."""

    observation_space = gym.spaces.Box(0.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.k = getattr(self, "k", -1) + 1
        self.t = 0
        return np.array([self.k, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.k % 2 == 0 and self.t == 3
        obs = np.array([self.k, self.t], np.float32)
        return obs, 10.0 * self.t + action, terminated, False, {}


gym.register("DQNCounter-v0", entry_point=CounterEnv, max_episode_steps=5)


def recorded_buffers(monkeypatch) -> list:
    """Every ReplayBuffer that dqn.train creates from now on."""
    made = []

    class Recording(dqn.ReplayBuffer):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(dqn, "ReplayBuffer", Recording)
    return made


def counter_args(tmp_path, **kwargs):
    """2 envs × 8 steps of DQNCounter-v0, no gradient step, no evaluation."""
    return dqn.Args(
        env_id="DQNCounter-v0",
        num_envs=2,
        total_timesteps=16,
        learning_starts=16,
        train_freq=32,
        eval_episodes=0,
        log_dir=str(tmp_path),
        progress=False,
        **kwargs,
    )


def test_dqn_vector_env_transitions_exact(monkeypatch, tmp_path):
    buffers = recorded_buffers(monkeypatch)
    # 2 envs × 8 steps: one terminated episode (3 steps), then one truncated by the time
    # limit (5 steps); no update
    dqn.train(counter_args(tmp_path, n_step=1))
    (rb,) = buffers
    k = np.array([0] * 3 + [1] * 5)
    t = np.array([0, 1, 2, 0, 1, 2, 3, 4])
    # the 8 states s of each env, in order
    per_env = np.stack([k, t], 1).astype(np.float32)
    # Rows alternate env 0, env 1. s' stays in s's episode (the truncated one's last s'
    # is its true final state (1, 5), not the next reset); only the third step of the
    # terminated episode has term = 1.
    np.testing.assert_array_equal(rb.obs[:16], per_env.repeat(2, 0))
    np.testing.assert_array_equal(rb.next_obs[:16], (per_env + [0, 1]).repeat(2, 0))
    terminations = np.array([0, 0, 1, 0, 0, 0, 0, 0]).repeat(2)
    np.testing.assert_array_equal(rb.terminations[:16], terminations)
    rewards = 10.0 * (rb.next_obs[:16, 1]) + rb.actions[:16]
    np.testing.assert_array_equal(rb.rewards[:16], rewards)
    # γ¹: every transition is one step
    np.testing.assert_array_equal(rb.discounts[:16], np.float32(0.99))
    assert rb.size == 16


def test_dqn_n_step_return_by_hand():
    assert dqn.n_step_return([1.0, 2.0, 3.0], 0.5) == 1 + 0.5 * 2 + 0.25 * 3
    assert dqn.n_step_return([4.0], 0.5) == 4.0


def test_dqn_n_step_transitions_stop_at_episode_ends(monkeypatch, tmp_path):
    buffers = recorded_buffers(monkeypatch)
    # the same 2 envs × 8 steps with n = 3: episode 0 terminates after 3 steps,
    # episode 1 is truncated after 5
    dqn.train(counter_args(tmp_path, n_step=3, gamma=0.5))
    (rb,) = buffers
    # every step starts one transition, the last ones of each episode with m < n
    assert rb.size == 16
    # Each env emits its episode-0 steps when it terminates (3rd step), then one
    # transition per step once its window of the next episode holds n = 3 steps (6th
    # and 7th), and the rest when the time limit cuts it (8th).
    k = np.array([0, 0, 0] * 2 + [1] * 4 + [1, 1, 1] * 2)
    t = np.array([0, 1, 2] * 2 + [0, 0, 1, 1] + [2, 3, 4] * 2)
    env = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(rb.obs[:16], np.stack([k, t], 1))
    # each episode's last t
    end = np.where(k == 0, 3, 5)
    # steps in each transition: 3, or up to the end of the episode
    m = np.minimum(3, end - t)
    # s_{t+m}, the true final state
    np.testing.assert_array_equal(rb.next_obs[:16], np.stack([k, t + m], 1))
    # only episode 0's end is terminal
    np.testing.assert_array_equal(rb.terminations[:16], k == 0)
    np.testing.assert_array_equal(rb.discounts[:16], 0.5**m)
    # R = Σ_j γ^j r_{t+j}, with r = 10 (t + 1) + a and a read off the row of state
    # (k, t) of the same env
    action = {(e, kk, tt): a for e, kk, tt, a in zip(env, k, t, rb.actions[:16])}
    R = []
    for e, kk, tt, mm in zip(env, k, t, m):
        rewards = [10 * (tt + 1 + j) + action[e, kk, tt + j] for j in range(mm)]
        R.append(sum(0.5**j * r for j, r in enumerate(rewards)))
    np.testing.assert_allclose(rb.rewards[:16], R)


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_dqn_polyak_update_matches_formula():
    source = torch.nn.Linear(3, 2)
    target = torch.nn.Linear(3, 2)
    old = copy.deepcopy(target)
    dqn.polyak_update(target, source, 0.3)
    pairs = zip(target.parameters(), source.parameters(), old.parameters())
    for p, p_src, p_old in pairs:
        # θ⁻ ← τθ + (1 − τ)θ⁻
        torch.testing.assert_close(p, 0.3 * p_src + 0.7 * p_old)
    dqn.polyak_update(target, source, 1.0)
    assert same_parameters(target, source)


def test_dqn_hard_target_copy_every_C_gradient_steps(monkeypatch, tmp_path):
    grad_steps = [0]
    copies = []
    real_update = dqn.polyak_update

    def count(optimizer, args, kwargs):
        grad_steps[0] += 1

    def recording_update(target, source, tau):
        real_update(target, source, tau)
        copies.append((grad_steps[0], tau, same_parameters(target, source)))

    monkeypatch.setattr(dqn, "polyak_update", recording_update)
    args = dqn.Args(
        total_timesteps=600,
        learning_starts=200,
        train_freq=100,
        gradient_steps=5,
        target_update_interval=3,
        eval_episodes=0,
        log_dir=str(tmp_path),
        progress=False,
    )
    handle = register_optimizer_step_post_hook(count)
    # training phases at steps 200, 300, 400, 500, 600: 5 × 5 = 25 gradient steps, a
    # copy every 3rd
    try:
        dqn.train(args)
    finally:
        handle.remove()
    assert grad_steps[0] == 25
    assert copies == [(c, 1.0, True) for c in range(3, 25, 3)]


def test_dqn_epsilon_schedule_values():
    steps = (0, 2000, 4000, 8000, 20000)
    values = [dqn.linear_schedule(1.0, 0.04, 8000, t) for t in steps]
    assert values == pytest.approx([1.0, 0.76, 0.52, 0.04, 0.04])


@pytest.mark.parametrize("epsilon", [0.0, 0.2, 1.0])
def test_dqn_epsilon_greedy_probabilities(epsilon):
    np.random.seed(0)
    n = 40_000
    n_actions = 4
    greedy = 2
    calls = []

    def greedy_action(obs):
        calls.append(len(obs))
        return np.full(len(obs), greedy)

    actions = dqn.epsilon_greedy(greedy_action, np.zeros((n, 3)), epsilon, n_actions)
    expected = np.full(n_actions, epsilon / n_actions)
    # the random draw can pick the greedy action too
    expected[greedy] = 1 - epsilon + epsilon / n_actions
    frequencies = np.bincount(actions, minlength=n_actions) / n
    np.testing.assert_allclose(frequencies, expected, atol=0.01)
    # Q is not evaluated when every env explores
    assert calls == ([] if epsilon == 1.0 else [n])


def test_dqn_smoke_saves_logs_and_evaluates_saved_model(tmp_path):
    flags = (
        "--total-timesteps 1200 --learning-starts 300 --train-freq 100 "
        "--gradient-steps 10 --num-envs 2 --double --loss mse --tau 0.5 "
        "--target-update-interval 1 --eval-episodes 3 --log-every 100 --save-model"
    )
    argv = flags.split() + ["--log-dir", str(tmp_path)]
    result = train_cli("dqn.py", argv)
    scalars = read_scalars(result["run_dir"])
    tags = (
        "losses/td_loss",
        "diagnostics/q_values",
        "diagnostics/epsilon",
        "diagnostics/buffer_fill",
        "charts/episodic_return",
        "charts/SPS",
        "eval/episodic_return",
    )
    for tag in tags:
        assert tag in scalars, tag
    # each of the 1200 steps starts one transition; up to n − 1 = 5 per env still wait
    # in the n-step window
    stored = scalars["diagnostics/buffer_fill"][-1][1] * 100_000
    assert 1200 - 2 * 5 <= stored <= 1200 + 1e-6
    assert scalars["diagnostics/epsilon"][0][1] < 1.0
    eval_argv = ["--eval-model", result["model_path"], "--eval-episodes", "3"]
    proc = run_script(ROOT / "dqn.py", eval_argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"eval/episodic_return {result['eval_return']:.2f}" in proc.stdout


def test_dqn_refuses_box_actions(tmp_path):
    proc = run_script(ROOT / "dqn.py", ["--env-id", "Pendulum-v1"], tmp_path)
    assert proc.returncode == 2
    message = "dqn.py: needs a Discrete action space; Pendulum-v1 has Box"
    assert message in proc.stderr


@pytest.mark.parametrize(
    "argv, fragment",
    [
        # was a ZeroDivisionError in the --train-freq check
        (["--num-envs", "0"], "--num-envs 0 must be >= 1"),
        (
            ["--batch-size", "200", "--buffer-size", "100"],
            "--buffer-size 100 must hold at least --batch-size 200",
        ),
        (["--hidden", "0"], "--hidden 0 must be >= 1"),
        (["--n-step", "0"], "--n-step 0 must be >= 1"),
        (["--learning-rate", "inf"], "--learning-rate inf"),
        (
            ["--train-freq", "100", "--num-envs", "3"],
            "--train-freq 100 must be a positive multiple of --num-envs 3",
        ),
    ],
)
def test_dqn_refuses_bad_input_in_one_line(argv, fragment, tmp_path, capsys):
    logs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        dqn.train(dqn.parse_args(argv + ["--log-dir", str(logs)]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error: dqn.py: "), lines
    assert fragment in lines[0]
    assert not logs.exists()


def test_dqn_non_finite_td_loss_stops_at_once(monkeypatch, tmp_path):
    # a huge (finite) step size overflows the weights in the first training phase, at
    # step 200
    losses = []
    real_loss = dqn.td_loss

    def recording_loss(*args):
        loss = real_loss(*args)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(dqn, "td_loss", recording_loss)
    args = dqn.Args(
        total_timesteps=600,
        learning_starts=200,
        train_freq=100,
        gradient_steps=8,
        learning_rate=1e30,
        save_model=True,
        eval_episodes=2,
        log_dir=str(tmp_path),
        progress=False,
    )
    message = r"td_loss is not finite.*\(step 200; no model saved"
    with pytest.raises(FloatingPointError, match=message):
        dqn.train(args)
    # it stopped at the first non-finite loss, inside the phase's 8 gradient steps
    assert 1 < len(losses) < 8
    assert np.isfinite(losses[:-1]).all() and not np.isfinite(losses[-1])
    assert not list(tmp_path.glob("*/*.pt"))


# Defaults chosen on seeds 11-20, n (--n-step 6) on 11-30: 20/20 reach >= 475. Held
# out, on an AMD EPYC VM (2 cores), `python dqn.py --seed S --threads 1 --no-progress`
# for S = 1-10: 10/10 end at 500, ~18 s wall per run (one-step targets: 7/10). This
# runs two of them, seeds 3 and 5.
@pytest.mark.regression
@pytest.mark.parametrize("seed", [3, 5])
def test_dqn_regression_cartpole_default(seed, tmp_path):
    argv = ["--seed", str(seed), "--device", "cpu", "--log-dir", str(tmp_path)]
    result = train_cli("dqn.py", argv)
    assert result["steps"] == 50_000
    assert result["eval_return"] >= 475, result["eval_return"]
