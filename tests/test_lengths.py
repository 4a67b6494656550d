"""Length generalisation (rnnbench.lengths): the config fields and their one-line refusals, the training lengths
(bounds, uniformity, reproducibility from the member's stream), the test-length evaluation reaching the results,
the memory estimate at the longest lengths, and run identity unchanged when the fields are off."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch

from rnnbench import Batch, Task, TaskConfig, TaskSpec
from rnnbench.config import constructor_kwargs, validate
from rnnbench.errors import ConfigError
from rnnbench.lengths import Lengths, at

SMALL = ["cell=gru", "tracking=none", "diagnostics=off", "model.hidden_size=8", "trainer.steps=6",
         "trainer.batch_size=4", "trainer.eval_every=3", "trainer.device=cpu", "trainer.progress=none",
         "trainer.final_eval_sequences=40", "trainer.threads=1"]


def lengths_of(registry, cfg) -> Lengths:
    spec = registry.task(cfg.task.name)
    return Lengths.build(spec, cfg.task, spec.task(**constructor_kwargs(cfg.task)))


# ------------------------------------------------------------------------------------------ the config


def test_dependency_length_follows_the_train_length_unless_given(compose):
    assert compose("task=parity").task.dependency_length == 50
    cfg = compose("task=parity", "task.train_length=40", "task.test_lengths=[40,100,250,500]")
    assert (cfg.task.dependency_length, cfg.task.train_length, list(cfg.task.test_lengths)) == (40, 40,
                                                                                              [40, 100, 250, 500])
    validate(cfg)
    cfg = compose("task=parity", "task.train_length=40", "task.dependency_length=20")
    assert cfg.task.dependency_length == 20
    validate(cfg)
    for name in ("adding", "copy", "even_pairs", "modular_arithmetic", "cycle_navigation"):
        assert compose(f"task={name}", "task.train_length=12").task.dependency_length == 12


def test_the_constructor_never_sees_the_length_fields(compose, registry):
    cfg = compose("task=even_pairs", "task.train_length=9", "task.test_lengths=[20]")
    assert constructor_kwargs(cfg.task) == {"dependency_length": 9, "variant": "deletang2023"}


REFUSED = [
    (["task.train_length=0"], "task.train_length", "a positive integer"),
    (["task.train_length=40", "task.dependency_length=50"], "task.dependency_length", "at most task.train_length (40)"),
    (["task.test_lengths=[100,40]"], "task.test_lengths", "ascending order, each once"),
    (["task.test_lengths=[40,40]"], "task.test_lengths", "ascending order, each once"),
    (["task.test_lengths=[0,40]"], "task.test_lengths", "positive integers"),
    (["task.train_length=2000000"], "task.train_length", "a positive integer up to 1000000"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), REFUSED, ids=[r[1] + str(i) for i, r in enumerate(REFUSED)])
def test_bad_lengths_are_refused_in_one_line(compose, overrides, key, allowed):
    with pytest.raises(ConfigError) as info:
        validate(compose("task=parity", *overrides))
    assert info.value.key == key and allowed in str(info.value) and "\n" not in str(info.value)


def test_a_length_the_task_refuses_is_named(compose, registry):
    # parity needs two bits: a test length of 1 is refused with the task's own reason
    with pytest.raises(ConfigError) as info:
        lengths_of(registry, compose("task=parity", "task.test_lengths=[1,40]"))
    assert info.value.key == "task.test_lengths"
    assert "at 1: an integer >= 2" in str(info.value)
    # the training lengths start at the task's shortest length: 2 for parity, 1 for even pairs
    assert lengths_of(registry, compose("task=parity", "task.train_length=6")).train_lengths == [2, 3, 4, 5, 6]
    assert lengths_of(registry, compose("task=even_pairs", "task.train_length=3")).train_lengths == [1, 2, 3]
    with pytest.raises(ConfigError, match="task.dependency_length=1 is not allowed: an integer >= 2"):
        lengths_of(registry, compose("task=parity", "task.train_length=1"))  # the task at its trained length


@dataclasses.dataclass
class GrowingConfig(TaskConfig):
    dependency_length: int = 4


class GrowingTask(Task):
    """A task whose input size is its length (a model for one length fits no other)."""

    output_size = 2
    readout = "last"

    def __init__(self, dependency_length: int = 4, variant: str = "") -> None:
        self.dependency_length = self.sequence_length = self.input_size = dependency_length

    def sample(self, batch_size, generator):
        x = torch.rand(batch_size, self.dependency_length, self.input_size, generator=generator)
        return Batch(x=x, y=(x[:, 0, 0] > 0.5).long())

    def loss(self, output, batch):
        return torch.nn.functional.cross_entropy(output, batch.y)

    def metrics(self, output, batch):
        return {"loss": self.loss(output, batch), "accuracy": (output.argmax(-1) == batch.y).float().mean()}

    def baseline(self):
        return {"loss": math.log(2), "accuracy": 0.5}


@pytest.mark.parametrize(("field", "value", "key"), [("train_length", 6, "task.train_length"),
                                                     ("test_lengths", [4, 8], "task.test_lengths")])
def test_a_task_whose_model_changes_with_the_length_is_refused(field, value, key):
    spec = TaskSpec(name="growing", task=GrowingTask, config=GrowingConfig)
    node = dataclasses.asdict(GrowingConfig(name="growing", **{field: value}))
    with pytest.raises(ConfigError) as info:
        Lengths.build(spec, node, GrowingTask(4))
    message = str(info.value)
    assert info.value.key == key and "\n" not in message
    assert "its input_size is" in message and "no model can be trained or tested across lengths" in message


# -------------------------------------------------------------------------------- the training lengths


def test_training_lengths_are_uniform_within_bounds_and_reproducible(compose, registry):
    lengths = lengths_of(registry, compose("task=parity", "task.train_length=10"))
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    drawn = [lengths.sample(2, g).x.shape[1] for _ in range(1800)]
    assert set(drawn) == set(range(2, 11))
    counts = Counter(drawn)
    expected = 1800 / 9
    chi2 = sum((counts[n] - expected) ** 2 / expected for n in range(2, 11))
    assert chi2 < 26.1  # 8 degrees of freedom: p = 0.001
    torch.manual_seed(1)  # the global RNG plays no part
    g = torch.Generator().manual_seed(3)
    assert [lengths.sample(2, g).x.shape[1] for _ in range(50)] == drawn[:50]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(20):
        a, b = lengths.sample(3, g1), lengths.sample(3, g2)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    # each batch is the task at its length: the parity of its bits
    batch = lengths.sample(5, g1)
    assert torch.equal(batch.y, batch.x.argmax(-1).sum(1) % 2)


def test_off_samples_the_task_itself(compose, registry):
    cfg = compose("task=parity", "task.dependency_length=7")
    lengths = lengths_of(registry, cfg)
    assert not lengths.active
    task = registry.task("parity").task(dependency_length=7)
    a, b = lengths.sample(4, torch.Generator().manual_seed(1)), task.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_test_lengths_reach_the_results_and_keep_the_final_evaluation(compose, registry, tmp_path):
    from rnnbench.runner import run_job

    common = [*SMALL, "task=parity", "task.train_length=6", f"trainer.checkpoint_dir={tmp_path}/ck"]
    (plain,) = run_job(compose(*common), tmp_path / "a", tmp_path)
    (tested,) = run_job(compose(*common, "task.test_lengths=[6,12]", "trainer.resume=false"), tmp_path / "b",
                        tmp_path)
    assert set(tested.metrics) - set(plain.metrics) == {"accuracy_at_6", "accuracy_at_12"}
    # testing changes nothing else: training, the final evaluation and the outcome are those of the plain run
    assert {k: v for k, v in tested.metrics.items() if "_at_" not in k and not k.startswith("time/")} == {
        k: v for k, v in plain.metrics.items() if not k.startswith("time/")}
    assert tested.outcome == plain.outcome
    for key in ("accuracy_at_6", "accuracy_at_12"):
        assert 0.0 <= tested.metrics[key] <= 1.0


def test_seed_parallel_members_train_on_their_own_lengths(compose, tmp_path):
    from rnnbench.runner import run_job

    results = run_job(compose(*SMALL, "task=even_pairs", "task.train_length=9", "task.test_lengths=[30]",
                              "trainer.seeds=2", f"trainer.checkpoint_dir={tmp_path}/ck"), tmp_path, tmp_path)
    assert len(results) == 2 and all("accuracy_at_30" in r.metrics for r in results)


class Recorder:
    """A tracker that keeps what it is given."""

    run_id = None

    def __init__(self) -> None:
        self.metrics: dict[str, dict[int, float]] = {}

    def log_metrics(self, metrics, step):
        for key, value in metrics.items():
            self.metrics.setdefault(key, {})[step] = value

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_final_metrics_at_each_test_length_against_a_direct_evaluation(compose, registry):
    """``final/<metric>_at_L`` equal the model's score on the task built at L, from the stream ``final:<n>@L``."""
    from rnnbench.evaluation import generator
    from rnnbench.lengths import Lengths
    from rnnbench.model import build_model
    from rnnbench.population import SinglePopulation
    from rnnbench.train import Member, train

    cfg = compose(*SMALL, "task=modular_arithmetic", "task.train_length=7", "task.test_lengths=[7,15]")
    spec = registry.task("modular_arithmetic")
    task = spec.task(**constructor_kwargs(cfg.task))
    lengths = Lengths.build(spec, cfg.task, task)
    torch.manual_seed(0)
    model = build_model(registry.cell("gru"), {}, task, 8)
    tracker = Recorder()
    seen: list[tuple[bool, int]] = []

    class Watched(SinglePopulation):
        def forward(self, xs, members):
            seen.append((self.model.training, xs[0].shape[1]))
            return super().forward(xs, members)

    (result,) = train(cfg, Watched(model), task, [Member(0, tracker)], torch.device("cpu"), lengths=lengths)
    trained = [n for training, n in seen if training]
    evaluated = [n for training, n in seen if not training]
    assert len(trained) == 6 and set(trained) <= {1, 3, 5, 7} and len(set(trained)) > 1  # odd: expressions
    # the periodic checks (steps 3 and 6: 4 batches of 4) and the final evaluation (40 sequences in chunks of 16)
    # at the trained length, then the test lengths: 7 in chunks of 16, 15 in chunks of 16 * 7 // 15 = 7
    assert evaluated == [7] * (2 * 4) + [7] * 3 + [7] * 3 + [15] * 6, evaluated
    model.eval()
    # final/accuracy (the outcome's) is the task at task.dependency_length = task.train_length = 7, stream final:1
    g = generator(0, "final:1", torch.device("cpu"))
    right = 0
    for start in range(0, 40, 16):
        batch = task.sample(min(16, 40 - start), g)
        assert batch.x.shape[1] == 7
        with torch.no_grad():
            right += int((model(batch.x).argmax(-1) == batch.y).sum())
    assert tracker.metrics["final/accuracy"] == {6: pytest.approx(right / 40)}
    for length in (7, 15):
        g = generator(0, f"final:1@{length}", torch.device("cpu"))
        chunk = lengths.chunk_at(length, 16)  # 4 x batch size sequences of length 7, the same time steps at 15
        assert chunk == (16 if length == 7 else 16 * 7 // 15)
        right = 0
        for start in range(0, 40, chunk):
            batch = spec.task(dependency_length=length, modulus=5).sample(min(chunk, 40 - start), g)
            with torch.no_grad():
                right += int((model(batch.x).argmax(-1) == batch.y).sum())
        accuracy = right / 40
        (logged,) = tracker.metrics[at("final/accuracy", length)].values()
        assert logged == pytest.approx(accuracy, abs=1e-6)
        assert result.metrics[f"accuracy_at_{length}"] == logged
        assert tracker.metrics[at("final/sequences", length)] == {6: 40.0}
        assert (at("final/loss", length)) in tracker.metrics and at("final/loss_se", length) in tracker.metrics


def test_baselines_at_each_test_length(compose, registry):
    lengths = lengths_of(registry, compose("task=cycle_navigation", "task.test_lengths=[1,40]"))
    assert lengths.baselines() == {
        "baseline/loss_at_1": 0.0, "baseline/accuracy_at_1": 1.0,
        **{at(f"baseline/{k}", 40): v for k, v in registry.task("cycle_navigation").task(40).baseline().items()}}


# ------------------------------------------------------------------------------------------ memory, identity


def test_memory_estimate_uses_the_longest_training_and_test_lengths(compose, registry):
    from rnnbench.memory import check_fits

    spec, cell = registry.task("parity"), registry.cell("gru")

    def estimate(*overrides):
        cfg = compose("task=parity", "diagnostics=off", "trainer.device=cpu", *overrides)
        task = spec.task(**constructor_kwargs(cfg.task))
        return check_fits(cfg, task, cell, {}, available=2**62, lengths=lengths_of(registry, cfg))

    at_ten = estimate("task.dependency_length=10")
    trained_long = estimate("task.train_length=400", "task.dependency_length=10")
    alone = estimate("task.dependency_length=400")
    assert trained_long.total == pytest.approx(alone.total)  # training is estimated at the longest length
    assert trained_long.total > 10 * at_ten.total / 2
    tested = estimate("task.dependency_length=10", "task.test_lengths=[1000000]")
    part = "evaluation at test length 1000000 (no gradients)"
    assert part in tested.parts and tested.total > at_ten.total
    assert "activations for backpropagation through time" not in tested.parts  # the larger of the two counts
    with pytest.raises(ConfigError) as info:
        cfg = compose("task=parity", "diagnostics=off", "trainer.device=cpu", "task.dependency_length=10",
                      "task.test_lengths=[1000000]")
        task = spec.task(**constructor_kwargs(cfg.task))
        check_fits(cfg, task, cell, {}, available=int(tested.total * 0.9), lengths=lengths_of(registry, cfg))
    assert part in str(info.value)


def test_run_keys_are_unchanged_while_the_fields_are_off(compose):
    from omegaconf import OmegaConf

    from rnnbench import identity

    resolved = OmegaConf.to_container(compose("task=parity"), resolve=True)
    before = {k: v for k, v in resolved.items()}
    before["task"] = {k: v for k, v in resolved["task"].items() if k not in ("train_length", "test_lengths")}
    assert identity.run_key(resolved) == identity.run_key(before)  # a run recorded before the fields existed
    assert identity.group_key(resolved) == identity.group_key(before)
    on = OmegaConf.to_container(compose("task=parity", "task.test_lengths=[100]"), resolve=True)
    assert identity.run_key(on) != identity.run_key(resolved)
    flat = identity.flatten(resolved)
    assert "task.train_length" not in identity.group_settings(flat)
    assert identity.group_settings(identity.flatten(on))["task.test_lengths"] == "[100]"


def test_the_length_generalisation_preset_follows_the_protocol(compose, registry):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["experiment=length_generalisation"],
                            return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["task"] == "parity,even_pairs,modular_arithmetic,cycle_navigation"
    assert {"lstm", "gru", "mingru"} <= set(params["cell"].split(","))
    assert cfg.tracking.experiment == "length_generalisation"
    assert params["cell"] == "rnn_tanh,lstm,gru,mingru,minlstm,lru,s6,slstm,indrnn,orthogonal_rnn"
    assert params["seed"] == "range(3)"
    assert (cfg.model.param_budget, cfg.trainer.steps) == (20000, 10000)
    for task in params["task"].split(","):  # each job of the sweep: trained up to 40, tested up to 500
        job = compose("experiment=length_generalisation", f"task={task}", "cell=mingru")
        assert (job.task.train_length, job.task.dependency_length) == (40, 40)
        assert list(job.task.test_lengths)[-1] == 500 and list(job.task.test_lengths)[0] == 40
        validate(job)
        lengths = lengths_of(registry, job)
        assert lengths.train_lengths[0] == (2 if task == "parity" else 1) and lengths.train_lengths[-1] == 40


def test_the_tasks_extras_are_logged_at_each_test_length(compose, registry):
    from rnnbench.model import build_model
    from rnnbench.population import SinglePopulation
    from rnnbench.train import Member, train

    cfg = compose(*SMALL, "task=parity", "task.variant=running", "task.dependency_length=4", "task.test_lengths=[8]")
    spec = registry.task("parity")
    task = spec.task(**constructor_kwargs(cfg.task))
    torch.manual_seed(0)
    tracker = Recorder()
    train(cfg, SinglePopulation(build_model(registry.cell("gru"), {}, task, 8)), task, [Member(0, tracker)],
          torch.device("cpu"), lengths=Lengths.build(spec, cfg.task, task))
    assert {"final/exact_at_8", "final/accuracy_at_8", "final/loss_at_8", "final/exact"} <= set(tracker.metrics)
