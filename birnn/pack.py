"""``birnn-pack OUT [key=value ...]``: a data config's splits (or Parquet/CSV files) as a pack for ``data=packed``.

``birnn-pack out/fmnist data=fashion_mnist`` packs what the loader gives (text and tagged data as token IDs, with
the tokenizer fitted on the training split; with ``task=regression`` the loader's values); ``--train/--test [--val]
FILE`` packs Parquet or CSV files read block by block (``birnn.data.tables``); ``birnn-pack --verify DIR`` checks
every file of a pack against its manifest's SHA-256. The format: ``birnn.data.packed`` and docs/packed.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from birnn.data import carried, packed
from birnn.engine.restore import user_errors
from birnn.schema import console
from birnn.schema.config import import_from_cwd
from birnn.schema.errors import BirnnError, first_line


def pack_config(out: Path, overrides: Sequence[str], overwrite: bool) -> Path:
    """Pack the splits of the data config that ``overrides`` compose (its loader's, before any hold-out)."""
    from hydra import compose, initialize_config_dir

    from birnn.data.pipeline import load_source
    from birnn.schema.config import CONFIG_DIR

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
            # what the data option sets for training (data=digits: trainer.epochs=15): it alone against no option
            option = cfg.hydra.runtime.choices.data
            hydra = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
            alone, without = (compose("config", overrides=[*hydra, *o]) for o in ([f"data={option}"], []))
    except Exception as e:  # Hydra's composition errors name the bad override
        raise BirnnError(f"Cannot compose the data config from {list(overrides)}: {first_line(e)}") from None
    if cfg.data._target_ == "birnn.data.load_packed":
        raise BirnnError("data=packed is already a pack; copy the directory instead")
    settings = carried.recorded(*(OmegaConf.to_container(c) for c in (alone, without)))
    fields = {carried.FIELD: settings, carried.SOURCE: f"data={option}"} if settings else {}
    if cfg.data.get("vectors"):
        raise BirnnError(
            "data.vectors: a pack does not hold pretrained vectors yet; train from the files (data=text or "
            "data=tagged) to use them"
        )
    task = cfg.task.name if "task" in cfg else None  # task=regression: the loader reads values
    return packed.pack_splits(load_source(cfg.data, task=task), out, overwrite, fields)


def written(manifest: Path) -> str:
    """What a pack holds, from its manifest: samples per split, classes, files and bytes written."""
    m = json.loads(manifest.read_text())
    entries = [e for arrays in m["splits"].values() for e in arrays.values()]
    size = sum(e["bytes"] for e in entries) + manifest.stat().st_size
    samples = ", ".join(f"{a['y']['shape'][0]:,} {split}" for split, a in m["splits"].items())
    targets = "float targets" if m.get("targets") == packed.VALUES else f"{len(m['classes'])} classes"
    return (
        f"Wrote {manifest.parent}: {samples} samples, {targets}, {len(entries) + 1} files, "
        f"{size:,} bytes ({size / 2**20:.1f} MiB); manifest {manifest}"
    )


@console.closed_pipe_ok
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=console.prog("birnn.pack"),
        description="Write a dataset as a pack that data=packed data.path=OUT trains from without loading it.",
    )
    parser.add_argument("out", type=Path, help="the pack directory to write (or, with --verify, to check)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="the data config, e.g. data=fashion_mnist")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pack in OUT")
    parser.add_argument("--verify", action="store_true", help="check every file of the pack OUT against its SHA-256")
    table = parser.add_argument_group("Parquet / CSV files (instead of a data config)")
    for split in packed.SPLITS:
        table.add_argument(f"--{split}", type=Path, metavar="FILE", help=f"the {split} split (.parquet or .csv)")
    table.add_argument("--label", default="label", help="the label column (default: label)")
    table.add_argument("--length", help="the column of valid steps per row (variable-length series)")
    table.add_argument("--classes", nargs="+", help="class names, label i is the i-th (default: 0 .. max label)")
    table.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="class labels or float targets (default: float targets when a label is not an integer)",
    )
    args = parser.parse_args(argv)
    import_from_cwd()  # a data._target_ may live in the working directory
    with user_errors():
        if args.verify:
            count = packed.verify(args.out)
            print(f"{args.out}: {count} files match the manifest")
            return
        try:
            if args.train or args.test:
                from birnn.data import tables

                files = {s: getattr(args, s) for s in packed.SPLITS if getattr(args, s)}
                manifest = tables.pack_tables(
                    args.out, files, args.label, args.length, args.classes, args.overwrite, args.task
                )
            else:
                manifest = pack_config(args.out, args.overrides, args.overwrite)
        except OSError as e:
            full = " (disk full)" if packed.disk_full(e) else ""
            raise BirnnError(
                f"Could not write the pack in {args.out}{full}: {e.strerror or e}. No manifest was written: "
                "the directory is an incomplete pack; free space and pack again with --overwrite"
            ) from None
        print(written(manifest))


if __name__ == "__main__":
    main()
