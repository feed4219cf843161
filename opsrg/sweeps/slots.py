"""Rows side by side on one pod: its GPUs shared out in disjoint sets, and what a row's
environment says about them and about its W&B run. Pure: the tmux driver holds a :class:`Slots`
and asks it before it starts a row."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def wanted(row_gpus: int | None, pod_gpus: int, max_parallel: int) -> int:
    """How many GPUs a row gets: its own ``gpus``, else all of the pod's when rows run one at a
    time (today's behaviour), else one; none on a pod without GPUs."""
    if row_gpus is not None:
        return row_gpus
    if pod_gpus == 0:
        return 0
    return pod_gpus if max_parallel <= 1 else 1


@dataclass
class Slots:
    """The pod's GPUs and which running row holds which."""

    gpus: list[str]
    held: dict[str, list[str]] = field(default_factory=dict)

    def free(self) -> list[str]:
        taken = {g for ids in self.held.values() for g in ids}
        return [g for g in self.gpus if g not in taken]

    def take(self, run_id: str, n: int) -> list[str] | None:
        """``n`` free GPUs for ``run_id`` (the lowest first), or None while fewer are free."""
        free = self.free()
        if n > len(free):
            return None
        self.held[run_id] = free[:n]
        return self.held[run_id]

    def hold(self, run_id: str, ids: list[str]) -> None:
        """Record what a row started by an earlier driver holds (the ones this pod still has)."""
        self.held[run_id] = [g for g in ids if g in self.gpus]

    def release(self, run_id: str) -> None:
        self.held.pop(run_id, None)


def gpu_env(ids: list[str], pod_has_gpus: bool) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a row holding ``ids``: set (even empty: no GPU) on a pod whose
    GPUs opsrg shares out, untouched otherwise."""
    if not pod_has_gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids)}


WANDB_TAG_MAX = 64


def wandb_env(campaign: str, run_id: str, run_dir: str, notes: str) -> dict[str, str]:
    """A run's W&B variables: grouped by campaign, named by run id, one W&B run across the
    ``--resume`` attempts of a campaign (same id, resume allowed), its files in the run folder."""
    rid = re.sub(r"[^A-Za-z0-9_-]", "-", f"{campaign}-{run_id}")[:128]
    tags = [t.strip()[:WANDB_TAG_MAX] for t in re.split(r"[,;]", notes) if t.strip()]
    out = {"WANDB_RUN_GROUP": campaign, "WANDB_NAME": run_id, "WANDB_RUN_ID": rid, "WANDB_RESUME": "allow",
           "WANDB_DIR": run_dir}
    if tags:
        out["WANDB_TAGS"] = ",".join(t.replace(",", " ") for t in tags)
    return out
