"""The pure core: addresses, the engine and its findings. No I/O, no clock of its own.

Everything above (sources, sinks, integrations, the live runner, the CLI) depends on this
package; it depends only on ``parsers`` and ``pipeline.errors``.
"""

from __future__ import annotations
