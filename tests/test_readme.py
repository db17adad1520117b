"""The README's snippet of the standalone adapter runs as written."""
import os
import re

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_snippet():
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    (snippet,) = [block for block in blocks if "from llu import LocalizedLinearAdapter" in block]
    return snippet


def test_the_readme_adapter_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    adapter, far_away = namespace["adapter"], namespace["far_away"]
    assert namespace["losses"][-1] < namespace["losses"][0]
    assert (adapter.transform_image(far_away) - far_away).abs().max() < 1e-4  # what the comment says
    assert namespace["logits"].shape == (64, 8) and (tmp_path / "adapter.pt").is_file()
    assert capsys.readouterr().out.startswith("tensor(")
