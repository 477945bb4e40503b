"""What a run prints: a compact console, the full record in train.log (console.py)."""

import logging

from transformers import TrainerControl, TrainerState, TrainingArguments

from langneurons import console


def _state(step: int, max_steps: int) -> TrainerState:
    state = TrainerState()
    state.global_step, state.max_steps = step, max_steps
    return state


def _drive(progress: console.TrainingProgress, max_steps: int, every: int) -> None:
    args, control = TrainingArguments(output_dir="unused", report_to=[]), TrainerControl()
    progress.on_train_begin(args, _state(0, max_steps), control)
    for step in range(1, max_steps + 1):
        progress.on_step_end(args, _state(step, max_steps), control)
        if step % every == 0:
            progress.on_log(args, _state(step, max_steps), control,
                            logs={"loss": 1.0 / step, "rewards/margins": 0.01 * step, "learning_rate": 1e-4})
    progress.on_train_end(args, _state(max_steps, max_steps), control)


def test_off_a_terminal_training_prints_a_line_per_tenth_and_logs_every_dict_to_the_file(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(console, "interactive", lambda: False)
    with console.run_console(tmp_path), caplog.at_level(logging.INFO, logger="langneurons"):
        _drive(console.TrainingProgress(), max_steps=200, every=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "langneurons"]
    steps = [line for line in lines if line.startswith("training: step ")]
    # a line at each tenth (20, 40, ..., 180), none at the end (the closing line says it), with loss and margin
    assert [int(line.split()[2].split("/")[0]) for line in steps] == list(range(20, 200, 20))
    assert "loss 0.0500, margin 0.20" in steps[0] and "left" in steps[0]
    assert lines[0] == "training: 200 steps" and lines[-1].startswith("training: 200 steps in ")
    # every log dict (40 of them) in train.log, nothing of them on the console
    log = (tmp_path / console.TRAIN_LOG).read_text()
    assert log.count('"loss"') == 40 and log.count("step 5 {") == 1
    assert not any("{" in line for line in lines)


def test_in_a_terminal_training_is_one_bar_with_loss_and_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "interactive", lambda: True)
    progress = console.TrainingProgress()
    seen = {}
    original = console.TrainingProgress.on_train_end

    def keep_bar(self, *args, **kwargs):
        seen["n"], seen["postfix"], seen["total"] = self.bar.n, self.bar.postfix, self.bar.total
        return original(self, *args, **kwargs)

    monkeypatch.setattr(console.TrainingProgress, "on_train_end", keep_bar)
    with console.run_console(tmp_path):
        _drive(progress, max_steps=30, every=10)
    assert seen == {"n": 30, "postfix": "loss 0.0333, margin 0.30", "total": 30}
    assert progress.bar is None  # closed


def test_the_console_formatter_marks_warnings_and_leaves_messages_bare():
    formatter = console.ConsoleFormatter()
    info = logging.LogRecord("langneurons.x", logging.INFO, __file__, 1, "step %d", (3,), None)
    warning = logging.LogRecord("transformers", logging.WARNING, __file__, 1, "careful", (), None)
    assert formatter.format(info) == "step 3"
    assert formatter.format(warning) == "warning (transformers): careful"
