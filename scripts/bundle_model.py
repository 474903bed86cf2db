"""Copy a training run's exported model into models/<name>/<kind>.{safetensors,json}.

    python scripts/bundle_model.py runs/faces32-eps faces-32 eps --note "stopped at step N of 20000 (CPU budget)"

The weights are copied byte for byte (the card's sha256 still matches); the card gains a
``bundled`` entry (source run directory, date, note). Both files are written atomically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from exactpost.io.images import save_text
from exactpost.nets import load_model
from exactpost.inference.zoo import KINDS, models_dir


def bundle(run_dir: Path, name: str, kind: str, note: str = "") -> Path:
    src = run_dir / "model"
    _, card = load_model(src)  # refuses a truncated or mismatched pair
    if card["objective"]["kind"] != kind:
        raise SystemExit(f"{src} is a {card['objective']['kind']} model, not {kind}")
    dest = models_dir() / name
    dest.mkdir(parents=True, exist_ok=True)
    with open(src.with_suffix(".safetensors"), "rb") as f, \
            tempfile.NamedTemporaryFile(dir=dest, prefix=f".{kind}.", suffix=".tmp", delete=False) as tmp:
        shutil.copyfileobj(f, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    Path(tmp.name).replace(dest / f"{kind}.safetensors")
    card["bundled"] = dict(source=str(run_dir), date=dt.date.today().isoformat(), note=note)
    save_text(dest / f"{kind}.json", json.dumps(card, indent=2) + "\n")
    load_model(dest / kind)  # the bundled pair loads (digest checked)
    return dest / kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    print(f"bundled {bundle(args.run_dir, args.name, args.kind, args.note)}", file=sys.stderr)


if __name__ == "__main__":
    main()
