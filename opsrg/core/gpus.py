"""GPU ids as CUDA_VISIBLE_DEVICES takes them: what POD_GPUS and nvidia-smi name."""

from __future__ import annotations

import re

GPU_ID = re.compile(r"^[A-Za-z0-9:_-]+$")  # an index (0) or a UUID (GPU-5f3c...), as CUDA_VISIBLE_DEVICES takes them


def parse_gpu_ids(text: str) -> list[str]:
    """``0,1,2,3`` (POD_GPUS, or nvidia-smi's index column) as ids; ValueError on anything else."""
    ids = [x.strip() for x in text.replace("\n", ",").split(",") if x.strip()]
    bad = [x for x in ids if not GPU_ID.match(x)]
    if bad:
        raise ValueError(f"not a GPU id: {bad[0]!r} (expected indices or UUIDs separated by commas, e.g. 0,1,2,3)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"a GPU is named twice in {','.join(ids)}")
    return ids


NVIDIA_SMI_INDEX = ("command -v nvidia-smi >/dev/null 2>&1 || exit 0; "
                    "nvidia-smi --query-gpu=index --format=csv,noheader")


def discover(host, declared: str = "") -> list[str]:
    """A pod's GPUs: ``declared`` (POD_GPUS) when set, else what nvidia-smi lists on ``host`` (any
    object with the hosts' ``run``); [] without it."""
    if declared:
        return parse_gpu_ids(declared)
    r = host.run(NVIDIA_SMI_INDEX, check=False, timeout=60)
    try:
        return parse_gpu_ids(r.stdout) if r.ok else []
    except ValueError:
        return []
