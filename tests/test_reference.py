"""One home for every default: docs/reference.md is generated from the schemas and conf/, and no option
file repeats a value its schema already holds."""

import dataclasses
import importlib.util

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from birnn.schema.config import CONFIG_DIR
from conftest import ROOT

spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)


def test_committed_reference_is_the_generated_one():
    committed = (ROOT / "docs" / "reference.md").read_text()
    assert committed == reference.render(), "docs/reference.md is out of date: run python scripts/config_reference.py"


def test_reference_shows_each_keys_default_and_each_options_own_values():
    text = reference.render()
    assert "| `hidden_size` | `int` | `128` | units per direction in each recurrent layer |" in text
    assert "- `model=bigru`: " in text and "*Sets* `cell=gru`." in text
    assert "`tracker=tensorboard` (default)" in text and "| `lr` | `float` | `0.05` |" in text  # SGD's own lr


def test_no_option_repeats_its_schemas_default():
    repo = ConfigStore.instance().repo["schema"]
    repeated = []
    for group in reference.GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            raw = OmegaConf.load(path)
            node = raw.get(group) if "# @package _global_" in path.read_text() else raw
            for entry in raw.get("defaults", []):
                if not (isinstance(entry, str) and entry.startswith("/schema/")) or not OmegaConf.is_dict(node):
                    continue
                schema = OmegaConf.get_type(repo[group][entry.split("/")[-1].split("@")[0] + ".yaml"].node)
                defaults = {f.name: f.default for f in dataclasses.fields(schema)}
                repeated += [f"{path.name}: {k}" for k, v in node.items() if k in defaults and defaults[k] == v]
    assert not repeated, f"values that belong to the schema only: {repeated}"
