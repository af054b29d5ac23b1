"""A rich progress bar with an ETA and the latest headline metrics; a no-op when disabled."""

from __future__ import annotations


class Progress:
    """``update(step, metrics)`` after each step; shows reward and eval pass@1 as they come."""

    HEADLINE = ("train/reward", "eval/pass@1", "train/loss")

    def __init__(self, total: int, start: int = 0, *, enabled: bool = True, name: str = "run"):
        self.enabled = enabled
        self._shown: dict[str, float] = {}
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
        from rich.progress import TimeElapsedColumn, TimeRemainingColumn

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        )
        self._task = self._bar.add_task(name, total=total, completed=start, info="")
        self._bar.start()

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        for key in self.HEADLINE:
            if key in metrics:
                self._shown[key] = float(metrics[key])
        info = "  ".join(f"{k.split('/')[-1] if k != 'eval/pass@1' else 'eval pass@1'}={v:.3f}" for k, v in self._shown.items())
        self._bar.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self.enabled:
            self._bar.stop()
