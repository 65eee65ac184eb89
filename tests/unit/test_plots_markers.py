"""The Train tab's charts mark gradual-unfreezing steps and show the alignment trainers' reward curves."""
from studio.plots import RunSeries, loss_figure, lr_grad_figure


def _train(step):
    return {"type": "train", "step": step, "loss": 2.0 / step, "lr": 1e-3, "grad_norm": 1.0}


def test_unfreeze_events_are_marked_on_the_loss_chart():
    s = RunSeries()
    s.add([_train(1), _train(2), {"type": "unfreeze", "step": 2, "layer": 0}, _train(3)])
    fig = loss_figure(s)
    labels = [a.text for a in fig.layout.annotations]
    assert "layer 0 unfrozen" in labels


def test_alignment_metrics_get_their_own_panel():
    s = RunSeries()
    s.add([_train(1), {"type": "alignment", "step": 1, "phase": "train", "rewards/margins": 0.1,
                       "rewards/accuracies": 0.5},
           _train(2), {"type": "alignment", "step": 2, "phase": "train", "rewards/margins": 0.4,
                       "rewards/accuracies": 1.0},
           {"type": "alignment", "step": 2, "phase": "eval", "rewards/margins": 0.3}])
    fig = lr_grad_figure(s)
    names = {t.name: list(t.y) for t in fig.data}
    assert names["rewards/margins"] == [0.1, 0.4]
    assert names["rewards/accuracies"] == [0.5, 1.0]
    assert names["val rewards/margins"] == [0.3]


def test_plain_sft_runs_keep_two_panels():
    s = RunSeries()
    s.add([_train(1)])
    assert {t.name for t in lr_grad_figure(s).data} == {"learning rate", "gradient norm"}


def test_grpo_rewards_show_their_sum_and_each_source():
    s = RunSeries()
    s.add([_train(1), {"type": "alignment", "step": 1, "phase": "train", "reward": 0.2, "reward_std": 0.1,
                       "rewards/pattern/mean": 0.5, "rewards/pattern/std": 0.2,
                       "rewards/reward_model/mean": -0.3}])
    names = {t.name: list(t.y) for t in lr_grad_figure(s).data}
    assert names["reward"] == [0.2]
    assert names["rewards/pattern/mean"] == [0.5] and names["rewards/reward_model/mean"] == [-0.3]
    assert "rewards/pattern/std" not in names


def test_a_constant_learning_rate_is_drawn_above_zero_not_on_a_default_range():
    s = RunSeries()
    s.add([{"type": "train", "step": i, "loss": 1.0, "lr": 2e-4, "grad_norm": 1.0} for i in (1, 2, 3)])
    axis = lr_grad_figure(s).layout.yaxis
    assert axis.range[0] == 0 and abs(axis.range[1] - 3e-4) < 1e-12 and axis.exponentformat == "e"
