"""The feature browser of an eval report: every latent of every dictionary, loaded lazily
from `.js` shards beside index.html (`shards`), rendered by `script`'s code inside it.

Public names: `write_browser`.
"""

from trainer.evaluation.report.browser.shards import write_browser

__all__ = ["write_browser"]
