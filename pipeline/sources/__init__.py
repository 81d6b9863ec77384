"""Where lines come from: the rotation-safe file tailer with its checkpoints, whole-file reads
for replay (plain, gzip, stdin) and the parallel replay workers."""

from __future__ import annotations
