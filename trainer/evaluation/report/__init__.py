"""The report of `actstore eval`: `writer.write_report` turns an `Evaluation` into eval.json,
latents.json, report.md, frontier.png and a self-contained index.html (`html.page`).

Public names: `write_report`.
"""

from trainer.evaluation.report.writer import write_report

__all__ = ["write_report"]
