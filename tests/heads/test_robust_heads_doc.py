"""docs/robust_heads.md's first example, run as written."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "robust_heads.md"


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path, capsys):
    example = tmp_path / "robust_heads_example.py"
    example.write_text(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[0])
    runpy.run_path(str(example))
    lines = capsys.readouterr().out.splitlines()
    scores = {line.split()[0]: (float(line.split()[2]), float(line.split()[4])) for line in lines}
    assert list(scores) == ["linear", "t3a", "linear-tts", "linear-ens"]
    clean, shifted = scores["linear"]
    assert shifted < clean - 0.05 and scores["linear-tts"][1] > clean - 0.01  # the shift hurts; tts undoes it
