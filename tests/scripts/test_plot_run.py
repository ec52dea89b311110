"""scripts/plot_run.py: a run's TensorBoard scalars -> one PNG per group, summary.png, summary.md of final values."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from typer.testing import CliRunner

from scripts import plot_run


def write_events(folder, steps, loss_offset=0.0):
    """Event files as the Trainer's TensorBoardCallback writes them (train/..., eval/... tags)."""
    writer = SummaryWriter(log_dir=str(folder))
    for step in steps:
        writer.add_scalar("train/loss", 2.0 / step + loss_offset, step)
        writer.add_scalar("train/learning_rate", 1e-3 * (1 - step / 10), step)
        writer.add_scalar("train/grad_norm", 1.0 + step / 10, step)
        writer.add_scalar("train/mean_token_accuracy", 0.5 + step / 40, step)
        writer.add_scalar("train/epoch", step / 10, step)
        if step % 2 == 0:
            writer.add_scalar("eval/loss", 2.5 / step, step)
            writer.add_scalar("eval/accuracy", 0.5 + step / 100, step)
    writer.close()


def test_plots_and_final_values_of_a_resumed_run(tmp_path, isolated_artifacts):
    logs = isolated_artifacts / "logs" / "my-run"
    write_events(logs, range(1, 7), loss_offset=100.0)  # killed after step 6 ...
    time.sleep(1.1)  # event file names carry the second they were opened
    write_events(logs, range(5, 9))  # ... resumed from checkpoint 4: steps 5-6 logged again, later
    run = tmp_path / "run"
    run.mkdir()
    record = {"config": {"LabTrainingArguments": {"logging_dir": str(logs)}}}
    (run / "run_record.json").write_text(json.dumps(record))

    out = plot_run.main(run)  # the run folder: its run record names the TensorBoard folder
    assert out == run / "plots"
    for name in ("loss", "accuracy", "learning_rate", "grad_norm", "mean_token_accuracy", "summary"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000
        assert Image.open(png).size[0] > 100
    assert not (out / "train_epoch.png").exists()
    table = (out / "summary.md").read_text()
    assert "| train/loss | 0.25 | 8 |" in table  # the resumed values replace the first attempt's
    scalars = plot_run.read_scalars(sorted(logs.glob("events.out.tfevents.*")))
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 9))
    loss = dict(scalars["train/loss"])
    assert loss[4] == pytest.approx(100.5) and loss[5] == pytest.approx(0.4)  # steps 5-6: the resumed values
    assert [s for s, _ in scalars["eval/loss"]] == [2, 4, 6, 8]
    # the held-out task accuracy and TRL's teacher-forced token accuracy are drawn apart
    groups = plot_run.plot_groups(scalars)
    assert groups["mean_token_accuracy"] == ("train/mean_token_accuracy",)
    assert groups["accuracy"] == ("eval/accuracy",)


def test_loss_on_a_log_axis_and_the_run_in_every_title(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    scalars = {"train/loss": [(1, 3.5), (2, 0.4), (3, 0.05)], "eval/accuracy": [(2, 0.0), (3, 0.7)]}
    fig, (loss, acc) = plt.subplots(1, 2)
    plot_run._draw(loss, scalars, "my-run: loss", ("train/loss",), log_axis=True)
    plot_run._draw(acc, scalars, "my-run: accuracy", ("eval/accuracy",), log_axis=True)  # a zero: stays linear
    assert (loss.get_yscale(), acc.get_yscale()) == ("log", "linear")
    plt.close(fig)
    titles = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda f, *a, **k: titles.extend(ax.get_title() for ax in f.axes))
    write_events(tmp_path / "my-run", range(1, 5))
    plot_run.main(tmp_path / "my-run", out=tmp_path / "plots")
    assert len(titles) >= 8 and all(t.startswith("my-run: ") for t in titles if t)


def test_cli_by_run_name_with_every_scalar(tmp_path, isolated_artifacts):
    write_events(isolated_artifacts / "logs" / "named", range(1, 4))
    result = CliRunner().invoke(_app(), ["named", "--all", "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "train_epoch.png").stat().st_size > 0
    assert "| eval/loss | 1.25 | 2 |" in result.output


def test_no_events_is_one_clear_error(tmp_path, isolated_artifacts):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        plot_run.main(tmp_path)


def _app():
    import typer

    app = typer.Typer(add_completion=False)
    app.command()(plot_run.main)
    return app
