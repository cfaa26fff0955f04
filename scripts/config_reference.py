"""Write the config reference (docs/reference.md) from its one home: the schemas in birnn/schema/config.py and conf/.

    python scripts/config_reference.py          # rewrite docs/reference.md
    python scripts/config_reference.py --check  # exit 1 if docs/reference.md is not what this script writes

Every key's type, default and description come from its schema dataclass (the comment on or above the field);
every option of a group comes from its YAML file (its first comment line, and the values it sets that differ
from its schema's defaults, composed by Hydra as ``python -m birnn.train`` would).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birnn.schema.config import CONFIG_DIR, Config  # noqa: E402  (after the sys.path line)

OUT = ROOT / "docs" / "reference.md"
GROUPS = ("model", "data", "optimizer", "scheduler", "trainer", "device", "task", "tracker")  # config.yaml's order
PRESETS = ("experiment", "hparams_search")
_FIELD = re.compile(r"^\s+(\w+):[^#]*?(?:#\s*(.*))?$")


def descriptions(schema: type) -> dict[str, str]:
    """Each field's comment: on its line, else the comment lines just above it."""
    found, above = {}, []
    for line in inspect.getsource(schema).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = _FIELD.match(line)
        if match and not stripped.startswith(("def ", "class ", '"""')):
            comment = match.group(2) or ""
            found[match.group(1)] = " ".join(above) if not comment or comment.startswith("type:") else comment
        above = []
    return found


def default_of(f: dataclasses.Field) -> object:
    """A schema field's default, a ``default_factory``'s value included (MISSING: none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default if f.default is not dataclasses.MISSING else MISSING


def inline(value: object) -> str:
    """A value as YAML on one line (lists in flow style)."""
    if OmegaConf.is_list(value) or isinstance(value, list):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    return OmegaConf.to_yaml({"v": value}).strip()[3:]


def show(value: object) -> str:
    if value is MISSING or value == "???":
        return "*required*"
    return f"`{inline(value)}`"


def keys_table(schema: type) -> list[str]:
    notes = descriptions(schema)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(schema):
        rows.append(f"| `{f.name}` | `{f.type}` | {show(default_of(f))} | {notes.get(f.name, '').replace('|', '/')} |")
    return rows


def schemas(group: str) -> list[type]:
    """The dataclasses registered under ``schema/<group>`` (ConfigStore), in registration order."""
    nodes = ConfigStore.instance().repo["schema"][group]
    types = [OmegaConf.get_type(node.node) for node in nodes.values()]
    return list(dict.fromkeys(t for t in types if dataclasses.is_dataclass(t)))


def leading_comment(path: Path) -> str:
    """A YAML file's first block of whole-line comments, joined (``# @package`` lines left out)."""
    lines: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            lines.append(line.lstrip("# ").strip())
        elif lines:
            break
    return " ".join(lines)


def differences(node: object, prefix: str = "") -> dict:
    """The values of a composed node that differ from its schema's defaults (every value of an untyped node)."""
    if not OmegaConf.is_dict(node):
        return {} if node is None else {prefix.rstrip("."): node}
    schema = OmegaConf.get_type(node)
    defaults = (
        {f.name: default_of(f) for f in dataclasses.fields(schema) if default_of(f) is not MISSING}
        if dataclasses.is_dataclass(schema)
        else {}
    )
    found = {}
    for key in node:
        value = node._get_node(key)._value() if OmegaConf.is_interpolation(node, key) else node[key]
        if OmegaConf.is_dict(value):
            found.update(differences(value, f"{prefix}{key}."))
        elif key not in defaults or defaults[key] != value:
            found[f"{prefix}{key}"] = value
    return found


def option_sets(group: str, option: str) -> dict:
    """What ``group=option`` sets in its own node beyond its schema's defaults, composed; for a data option also
    what it changes in ``model`` and ``trainer`` (its own trainer settings, conf/data_model/ with model=bilstm)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=[f"{group}={option}"])
        base = compose("config")
    found = differences(cfg[group])
    for other in ("model", "trainer") if group == "data" else ():
        before, after = (OmegaConf.to_container(c[other]) for c in (base, cfg))
        found.update({f"{other}.{k}": v for k, v in after.items() if before.get(k) != v})
    return found


def options_list(group: str, default: str | None) -> list[str]:
    rows = []
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        option = path.stem
        line = f"- `{group}={option}`{' (default)' if option == default else ''}: {leading_comment(path)}"
        sets = option_sets(group, option) if group in GROUPS else {}
        if sets:
            line += " *Sets* " + ", ".join(f"`{k}={inline(v)}`" for k, v in sets.items()) + "."
        rows.append(line)
    return rows


def default_options() -> dict[str, str | None]:
    tree = OmegaConf.load(CONFIG_DIR / "config.yaml")
    chosen = {}
    for item in OmegaConf.to_container(tree.defaults):  # unresolved: data_model's ${data}_${model} stays text
        if isinstance(item, dict):
            ((key, value),) = item.items()
            chosen[str(key)] = value
    return chosen


def render() -> str:
    chosen = default_options()
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by scripts/config_reference.py from birnn/schema/config.py and conf/; do not edit. -->",
        "",
        "Every key below is set with `key=value` on the command line (`python -m birnn.train model.hidden_size=64`),",
        "every option with `group=option` (`python -m birnn.train scheduler=cosine`). Each default has one home:",
        "the schema dataclass in `birnn/schema/config.py` (shown here), or the option's YAML file under `conf/`",
        "where an option sets a value of its own (shown as *Sets*).",
        "",
        "## Top level",
        "",
        *(row for row in keys_table(Config) if "MISSING" not in row and "*required*" not in row),
        "",
    ]
    for group in GROUPS:
        lines += [f"## `{group}`", "", *options_list(group, chosen.get(group)), ""]
        for schema in schemas(group):
            doc = inspect.getdoc(schema)
            lines += [f"### `{schema.__name__}`", ""]
            if doc and not doc.startswith(f"{schema.__name__}("):
                lines += [" ".join(doc.split()), ""]
            lines += [*keys_table(schema), ""]
    for group in PRESETS:
        lines += [f"## `{group}` (presets)", "", *options_list(group, None), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/reference.md differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"Wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
