"""trpo.py: conjugate gradient, the Fisher-vector product and the KL in closed form
against dense linear algebra and torch.distributions; one trust-region step on a fixed
batch, its first step as the natural gradient with α = √(2δ / gᵀF⁻¹g), and --npg-step's
fixed step α F⁻¹g; episode endings on a scripted env; end-to-end runs with a saved
model; learning thresholds with fixed seeds."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from conftest import ROOT, load, read_scalars, run_script, train_cli

trpo = load("trpo.py")
SPACES = {
    "categorical": gym.spaces.Discrete(3),
    "gaussian": gym.spaces.Box(-1.0, 1.0, (2,)),
}


def tiny_policy(kind: str, obs_dim=3, hidden=4, batch=16, seed=0):
    """A float64 agent with random (not initial) parameters, a batch of observations
    and actions drawn from π_θ."""
    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    policy = trpo.Agent(obs_space, SPACES[kind], hidden, normalize=False).double()
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0.0, 0.5)
    obs = torch.randn(batch, obs_dim, dtype=torch.float64)
    with torch.no_grad():
        actions = policy.sample(obs)
    return policy, obs, actions


def theta(policy) -> list:
    """The parameters θ that the trust-region step moves: all but the critic's."""
    named = policy.named_parameters()
    return [p for name, p in named if not name.startswith("critic.")]


def closed_form_kl(kind: str, dist_old, dist):
    """KL(π_old‖π_θ) per state, by the script's closed form for the kind of policy."""
    if kind == "categorical":
        return trpo.categorical_kl(*dist_old, *dist)
    return trpo.gaussian_kl(*dist_old, *dist)


def as_distribution(kind: str, dist):
    if kind == "categorical":
        return Categorical(logits=dist[0])
    return Normal(dist[0], dist[1].exp())


def test_trpo_conjugate_gradient_matches_solve():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    A = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x, residual = trpo.conjugate_gradient(lambda v: A @ v, b, iters=50, tol=1e-10)
    torch.testing.assert_close(x, torch.linalg.solve(A, b))
    assert residual < 1e-10
    # stopped early, it still reports the true residual ‖b − Ax‖ of the x it returns
    x, residual = trpo.conjugate_gradient(lambda v: A @ v, b, iters=3, tol=1e-10)
    torch.testing.assert_close(residual, torch.linalg.norm(b - A @ x))
    assert residual > 1e-3


@pytest.mark.parametrize("kind", SPACES)
def test_trpo_kl_log_probs_and_entropy_match_torch_distributions(kind):
    policy, obs, actions = tiny_policy(kind)
    old = tuple(t.detach() for t in policy(obs))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
        new = policy(obs)
        logp, entropy = policy.logp_entropy(obs, actions)
    expected_kl = kl_divergence(as_distribution(kind, old), as_distribution(kind, new))
    expected_logp = as_distribution(kind, new).log_prob(actions)
    expected_entropy = as_distribution(kind, new).entropy()
    if kind == "gaussian":  # independent action dimensions: sum over them
        expected_kl = expected_kl.sum(-1)
        expected_logp = expected_logp.sum(-1)
        expected_entropy = expected_entropy.sum(-1)
    torch.testing.assert_close(closed_form_kl(kind, old, new), expected_kl)
    torch.testing.assert_close(logp, expected_logp)
    torch.testing.assert_close(entropy, expected_entropy)


def call_with(policy, theta_vector, obs):
    """policy(obs), the distribution's parameters, with θ taken from a flat vector (in
    parameters_to_vector order)."""
    named = policy.named_parameters()
    shapes = [(name, p.shape) for name, p in named if not name.startswith("critic.")]
    chunks = torch.split(theta_vector, [shape.numel() for _, shape in shapes])
    params = {name: t.view(shape) for (name, shape), t in zip(shapes, chunks)}
    return functional_call(policy, params, (obs,))


def kl_hessian(kind, policy, obs, dist_old, theta_old):
    """The dense (n, n) Hessian of KL̄(θ) = Ê[KL(π_old ‖ π_θ)] at θ_old, by
    torch.autograd.functional.hessian."""

    def mean_kl(theta_vector):
        dist = call_with(policy, theta_vector, obs)
        return closed_form_kl(kind, dist_old, dist).mean()

    return torch.autograd.functional.hessian(mean_kl, theta_old)


@pytest.mark.parametrize("kind", SPACES)
def test_trpo_fisher_vector_product_is_hessian_of_mean_kl(kind):
    policy, obs, _ = tiny_policy(kind)
    theta_old = parameters_to_vector(theta(policy)).detach()
    with torch.no_grad():
        dist_old = policy(obs)
    hessian = kl_hessian(kind, policy, obs, dist_old, theta_old)
    v, damping = torch.randn_like(theta_old), 0.1
    mean_kl = closed_form_kl(kind, dist_old, policy(obs)).mean()
    fvp = trpo.fisher_vector_product(mean_kl, theta(policy), damping)
    torch.testing.assert_close(fvp(v), hessian @ v + damping * v)
    # at θ_old it is the Fisher matrix Ê[Σ_a π(a|s) ∇log π(a|s) ∇log π(a|s)ᵀ]
    if kind == "categorical":

        def log_pi(th):
            return call_with(policy, th, obs)[0].log_softmax(-1)

        # jac: (batch, actions, n), ∇log π(a|s) for every s and a
        jac = torch.autograd.functional.jacobian(log_pi, theta_old)
        pi = dist_old[0].softmax(-1)
        fisher = torch.einsum("sa,sap,saq->pq", pi, jac, jac) / len(obs)
        torch.testing.assert_close(hessian, fisher)


def dense_natural_gradient(kind, policy, obs, actions, advantages, damping):
    """The natural-gradient direction in dense linear algebra, at the policy's current
    θ_old: g = ∇L(θ_old) by autograd through torch.distributions, the dense Fisher
    matrix F = ∇²KL̄(θ_old) by autograd, x = (F + damping·I)⁻¹ g by torch.linalg.solve.
    Returns (θ_old, F + damping·I, x, L), L(θ) the surrogate as a function of a flat
    θ."""
    theta_old = parameters_to_vector(theta(policy)).detach()
    with torch.no_grad():
        dist_old = policy(obs)
    old = as_distribution(kind, dist_old)

    def surrogate(theta_vector):
        """L(θ) = Ê[r_t(θ) Â_t], through torch.distributions."""
        dist = as_distribution(kind, call_with(policy, theta_vector, obs))
        log_ratio = dist.log_prob(actions) - old.log_prob(actions)
        # a Gaussian's dimensions: summed
        return (log_ratio.view(len(obs), -1).sum(-1).exp() * advantages).mean()

    g = torch.autograd.functional.jacobian(surrogate, theta_old)
    fisher = kl_hessian(kind, policy, obs, dist_old, theta_old)
    damped = fisher + damping * torch.eye(len(theta_old), dtype=torch.float64)
    x = torch.linalg.solve(damped, g)
    return theta_old, damped, x, surrogate


def step_problem(kind):
    """A tiny float64 policy, a batch of 64 of its own actions and fixed advantages."""
    policy, obs, actions = tiny_policy(kind, batch=64)
    generator = torch.Generator().manual_seed(1)
    advantages = torch.randn(64, dtype=torch.float64, generator=generator)
    return policy, obs, actions, advantages


def exact_cg_args(n: int, **kwargs) -> "trpo.Args":
    """Args whose conjugate gradient runs to the exact solve (n iterations, no early
    stop), damping 0.1."""
    return trpo.Args(cg_damping=0.1, cg_iters=n, cg_tol=1e-12, **kwargs)


@pytest.mark.parametrize("kind", SPACES)
def test_trpo_update_is_the_natural_gradient_step_inside_the_trust_region(kind):
    policy, obs, actions, advantages = step_problem(kind)
    params = theta(policy)
    max_kl = 0.01
    old = as_distribution(kind, policy(obs))
    # the same step in dense linear algebra: x = (H + damping·I)⁻¹ g, step scale
    # √(2δ / xᵀ(H + damping·I)x)
    problem = dense_natural_gradient(kind, policy, obs, actions, advantages, 0.1)
    theta_old, damped, x, surrogate = problem
    step_scale = torch.sqrt(2 * max_kl / (x @ damped @ x))

    args = exact_cg_args(
        len(theta_old), max_kl=max_kl, backtrack_coef=0.8, backtrack_iters=10
    )
    diagnostics = trpo.trpo_update(policy, obs, actions, advantages, args)
    stats = {name: float(value) for name, value in diagnostics.items()}
    theta_new = parameters_to_vector(params).detach()
    assert stats["line_search_accepted"] == 1.0
    assert stats["step_scale"] == pytest.approx(step_scale.item(), rel=1e-6)
    backtrack = 0.8 ** (stats["line_search_steps"] - 1)
    torch.testing.assert_close(theta_new - theta_old, backtrack * step_scale * x)
    new = as_distribution(kind, policy(obs))
    kl_new = kl_divergence(old, new).view(64, -1).sum(-1).mean().item()
    assert 0.25 * max_kl < kl_new <= max_kl + 1e-12
    assert kl_new == pytest.approx(stats["kl"])
    improvement = (surrogate(theta_new) - surrogate(theta_old)).item()
    assert improvement > 0
    assert improvement == pytest.approx(stats["surrogate_improvement"])


@pytest.mark.parametrize("kind", SPACES)
def test_trpo_first_step_is_the_natural_gradient_step_with_alpha_from_delta(
    kind, monkeypatch
):
    # Guberina's RL notes, eq. 1.64-1.67: the natural gradient picks a step size α,
    # TRPO a radius δ and solves for the step; the quadratic model ½ (αx)ᵀF(αx) = δ
    # with x = F⁻¹g gives α = √(2δ / gᵀF⁻¹g) (F with the script's damping throughout)
    policy, obs, actions, advantages = step_problem(kind)
    npg_policy = copy.deepcopy(policy)
    max_kl = 0.01
    problem = dense_natural_gradient(kind, policy, obs, actions, advantages, 0.1)
    theta_old, damped, x, _ = problem
    g = damped @ x
    alpha = torch.sqrt(2 * max_kl / (g @ torch.linalg.solve(damped, g)))
    # TRPO's first, full step: the one the line search starts from (κ^0)
    full_steps = []
    line_search = trpo.line_search

    def spy(params, full_step, *rest):
        full_steps.append(full_step.clone())
        return line_search(params, full_step, *rest)

    monkeypatch.setattr(trpo, "line_search", spy)
    n = len(theta_old)
    trpo.trpo_update(policy, obs, actions, advantages, exact_cg_args(n, max_kl=max_kl))
    assert len(full_steps) == 1
    torch.testing.assert_close(full_steps[0], alpha * x)
    # --npg-step α from the same θ_old moves θ by exactly that step
    args = exact_cg_args(n, max_kl=max_kl, npg_step=alpha.item())
    stats = trpo.trpo_update(npg_policy, obs, actions, advantages, args)
    assert len(full_steps) == 1  # no line search
    theta_npg = parameters_to_vector(theta(npg_policy)).detach()
    torch.testing.assert_close(theta_npg - theta_old, full_steps[0])
    assert float(stats["step_scale"]) == pytest.approx(alpha.item())


@pytest.mark.parametrize("kind", SPACES)
def test_trpo_npg_step_moves_theta_by_alpha_times_natural_gradient(kind):
    policy, obs, actions, advantages = step_problem(kind)
    old = as_distribution(kind, policy(obs))
    problem = dense_natural_gradient(kind, policy, obs, actions, advantages, 0.1)
    theta_old, damped, x, surrogate = problem
    # α three times the step that δ = 1e-4 allows: the quadratic model puts KL̄ at 9δ,
    # and with no KL check the step is taken all the same
    max_kl = 1e-4
    alpha = 3 * torch.sqrt(2 * max_kl / (x @ damped @ x)).item()
    args = exact_cg_args(len(theta_old), max_kl=max_kl, npg_step=alpha)
    stats = trpo.trpo_update(policy, obs, actions, advantages, args)
    stats = {name: float(value) for name, value in stats.items()}
    theta_new = parameters_to_vector(theta(policy)).detach()
    # θ ← θ + α F⁻¹g, F⁻¹g by the dense solve
    torch.testing.assert_close(theta_new - theta_old, alpha * x)
    new = as_distribution(kind, policy(obs))
    kl_new = kl_divergence(old, new).view(64, -1).sum(-1).mean().item()
    assert kl_new > max_kl
    assert stats["kl"] == pytest.approx(kl_new)
    assert stats["line_search_accepted"] == 1.0 and stats["line_search_steps"] == 1
    improvement = (surrogate(theta_new) - surrogate(theta_old)).item()
    assert stats["surrogate_improvement"] == pytest.approx(improvement)


@pytest.mark.parametrize("why", ["kl_above_tiny_delta", "surrogate_not_improved"])
def test_trpo_line_search_rejects_and_restores_parameters(why):
    policy, obs, actions = tiny_policy("categorical", batch=64)
    generator = torch.Generator().manual_seed(1)
    advantages = torch.randn(64, dtype=torch.float64, generator=generator)
    params = theta(policy)
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        dist_old = policy(obs)
        logp_old, _ = policy.logp_entropy(obs, actions)

    def objectives():
        """(L(θ), KL̄(θ)) at the current θ, as trpo_update gives them to the search."""
        logp, _ = policy.logp_entropy(obs, actions)
        surr = trpo.surrogate(logp, logp_old, advantages)
        return surr, closed_form_kl("categorical", dist_old, policy(obs)).mean()

    surr_old = objectives()[0]
    g = trpo.flat_grad(surr_old, params)
    # uphill with δ = 1e-12, which no step of the search gets under; or downhill with
    # a δ that every step meets
    if why == "kl_above_tiny_delta":
        step = 0.1 * g
        max_kl = 1e-12
    else:
        step = -0.01 * g
        max_kl = 1.0
    surr_old = surr_old.detach()
    result = trpo.line_search(params, step, objectives, surr_old, max_kl, 0.8, 10)
    accepted, steps, surr, kl = result
    assert not accepted and steps == 10 and surr == surr_old and kl == 0.0
    assert torch.equal(parameters_to_vector(params), theta_old)


def test_trpo_rejected_line_search_returns_kl_where_its_inputs_are():
    """A rejected search returns KL̄ = 0 on the device and in the dtype of L(θ_old), as
    an accepted one returns KL̄(θ). Run with torch's default device set to "meta", a
    tensor made without device= is a meta tensor (on a GPU run: a CPU one)."""
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    surr_old = torch.tensor(1.0, dtype=torch.float64)
    overshoot = torch.tensor(1.0, dtype=torch.float64)

    def objectives():
        """L(θ) never improves on L(θ_old), and KL̄(θ) always exceeds δ."""
        return surr_old, overshoot

    step = torch.ones(3, dtype=torch.float64)
    with torch.device("meta"):
        result = trpo.line_search(params, step, objectives, surr_old, 0.01, 0.5, 3)
    accepted, steps, surr, kl = result
    assert not accepted and kl.device == surr_old.device and kl.item() == 0.0
    assert kl.dtype == surr_old.dtype


class EndingsEnv(gym.Env):
    """obs = (t, episode number k), reward 1. Even-numbered episodes terminate at t = 3;
    odd ones run into the TimeLimit at t = 4, so a rollout holds both kinds of ending at
    known steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    k = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k += 1
        self.t = 0
        return np.array([0, self.k], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.k % 2 == 0 and self.t == 3
        return np.array([self.t, self.k], np.float32), 1.0, terminated, False, {}


gym.register("TRPOTestEndings-v0", entry_point=EndingsEnv, max_episode_steps=4)


def test_trpo_rollout_bootstraps_truncation_not_termination(monkeypatch, tmp_path):
    module = load("trpo.py")
    seen = {}
    compute_gae = module.compute_gae
    trpo_update = module.trpo_update

    def spy_gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
        seen["values"] = values[:, 0]
        seen["next_values"] = next_values[:, 0]
        seen["term"] = terminations[:, 0]
        seen["done"] = dones[:, 0]
        endings = (terminations, dones)
        return compute_gae(rewards, values, next_values, *endings, gamma, gae_lambda)

    def spy_update(agent, *args):
        """Records V before its regression: the V the rollout's values came from."""
        with torch.no_grad():
            obs = torch.tensor(trajectory, dtype=torch.float32)
            final_obs = torch.tensor([[4, 1], [4, 3]], dtype=torch.float32)
            seen["v_trajectory"] = agent.value(obs)
            seen["v_final"] = agent.value(final_obs)
        return trpo_update(agent, *args)

    # episodes: steps 0-2 (k = 0, terminated), 3-6 (k = 1, truncated), 7-9
    # (terminated), 10-13 (truncated)
    lengths = [3, 4, 3, 4]
    trajectory = [[t, k] for k, length in enumerate(lengths) for t in range(length)]
    monkeypatch.setattr(module, "compute_gae", spy_gae)
    monkeypatch.setattr(module, "trpo_update", spy_update)
    argv = ["--env-id", "TRPOTestEndings-v0", "--num-envs", "1", "--num-steps", "14"]
    argv += ["--total-timesteps", "14", "--eval-episodes", "0"]
    argv += ["--log-dir", str(tmp_path), "--device", "cpu"]
    train_cli(module, argv)
    assert seen["term"].nonzero().flatten().tolist() == [2, 9]
    assert seen["done"].nonzero().flatten().tolist() == [2, 6, 9, 13]
    # V(s_t) of the observations actually seen
    torch.testing.assert_close(seen["values"], seen["v_trajectory"])
    # V of the true last observation
    torch.testing.assert_close(seen["next_values"][[6, 13]], seen["v_final"])
    inside = [t for t in range(13) if t not in (2, 6, 9)]
    values_after = seen["values"][[t + 1 for t in inside]]
    torch.testing.assert_close(seen["next_values"][inside], values_after)


SMOKE = {
    "CartPole-v1": ["--num-envs", "2", "--num-steps", "64"],
    "InvertedPendulum-v5": [
        *("--num-envs", "2", "--num-steps", "128", "--vf-minibatches", "4"),
    ],
}


@pytest.mark.parametrize("env_id", SMOKE)
def test_trpo_smoke_saves_logs_and_evaluates_from_file(env_id, tmp_path):
    argv = ["--env-id", env_id, "--total-timesteps", "512", "--vf-epochs", "2"]
    argv += ["--eval-episodes", "2", "--save-model", "--log-dir", str(tmp_path)]
    argv += ["--device", "cpu"] + SMOKE[env_id]
    result = train_cli("trpo.py", argv)
    tags = read_scalars(result["run_dir"])
    diagnostics = ["kl", "surrogate_improvement", "line_search_steps"]
    diagnostics += ["line_search_accepted", "cg_residual", "step_scale"]
    diagnostics += ["explained_variance"]
    if env_id == "InvertedPendulum-v5":
        diagnostics.append("std")
    expected = ["charts/episodic_return", "charts/SPS", "losses/value_loss"]
    expected += ["eval/episodic_return"]
    expected += [f"diagnostics/{name}" for name in diagnostics]
    for tag in expected:
        assert tag in tags, tag
    # δ = 0.01: never outside the trust region
    assert all(kl <= 0.01 for _, kl in tags["diagnostics/kl"])
    ckpt = torch.load(result["model_path"])
    assert ckpt["args"]["env_id"] == env_id
    # the observation statistics travel with the model
    if env_id == "InvertedPendulum-v5":
        assert ckpt["model"]["obs_rms.count"] > 500
        assert ckpt["model"]["obs_rms.var"].ne(1.0).all()
    # evaluating the saved file, without training, reproduces the evaluation at the
    # end of training
    argv = ["--eval-model", result["model_path"], "--eval-episodes", "2"]
    proc = run_script(ROOT / "trpo.py", argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"eval/episodic_return {result['eval_return']:.2f}" in proc.stdout


# Held-out seeds: δ = 0.005 was chosen on seeds 31-50 (20/20 evaluate ≥ 475; at
# δ = 0.01, 19/20). On seeds 51-70, which played no part, 19/20 at 0.005 and 15/20 at
# 0.01 (benchmarks/results/seeds/trpo-a2c-seeds.md). Seeds 54 and 63 are two of those
# that δ = 0.01 lost (344.4 and 158.9): the training return passed 475 and the greedy
# policy drifted off it in the updates after.
@pytest.mark.regression
@pytest.mark.parametrize("seed", [54, 63])
def test_trpo_solves_cartpole_in_100k_steps(seed, tmp_path):
    argv = ["--seed", str(seed), "--log-dir", str(tmp_path), "--device", "cpu"]
    result = train_cli("trpo.py", argv)
    episodes = read_scalars(result["run_dir"])["charts/episodic_return"]
    returns = [r for step, r in episodes]
    assert max(np.convolve(returns, np.ones(10) / 10, "valid")) >= 475
    assert result["eval_return"] >= 475


@pytest.mark.regression
@pytest.mark.parametrize("seed", [3, 4])
def test_trpo_balances_inverted_pendulum(seed, tmp_path):
    argv = ["--env-id", "InvertedPendulum-v5", "--seed", str(seed)]
    argv += ["--total-timesteps", "50000", "--log-dir", str(tmp_path)]
    argv += ["--device", "cpu"]
    assert train_cli("trpo.py", argv)["eval_return"] >= 900
