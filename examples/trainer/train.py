"""A small numpy trainer shaped like a nanoGPT training script: a Python config file, then
``--key=value`` overrides, checkpoints it resumes from, ``metrics.json``, and a non-zero exit when
the loss diverges.

    python train.py config/train_small.py --lr=0.05 --seed=1 [--out_dir=out]

It fits a two-layer MLP to a noisy sine with full-batch gradient descent. Under opsrg, the run's
folder is ``$OPSRG_RUN_DIR`` (``--out_dir`` otherwise).
"""

import json
import math
import os
import sys
import time

import numpy as np

# ----------------------------------------------------------------- defaults, then config, then overrides
hidden = 32
lr = 0.05
max_iters = 2000
eval_interval = 200
ckpt_interval = 500
n_train = 512
noise = 0.1
seed = 0
out_dir = os.environ.get("OPSRG_RUN_DIR", "out")
diverge_loss = 1e3  # give up (exit 2) when the training loss passes this, or is not finite

args = sys.argv[1:]
if args and not args[0].startswith("--"):
    exec(open(args.pop(0)).read())  # the config file: plain assignments, as nanoGPT's configurator
for arg in args:
    key, _, val = arg.removeprefix("--").partition("=")
    if key not in globals() or key.startswith("_"):
        sys.exit(f"unknown config key: {key}")
    old = globals()[key]
    globals()[key] = type(old)(val) if not isinstance(old, str) else val

# ----------------------------------------------------------------- data and model
rng = np.random.default_rng(seed)
x = rng.uniform(-math.pi, math.pi, (n_train, 1))
y = np.sin(x) + noise * rng.standard_normal((n_train, 1))
params = {"w1": rng.standard_normal((1, hidden)) * 0.5, "b1": np.zeros(hidden),
          "w2": rng.standard_normal((hidden, 1)) / math.sqrt(hidden), "b2": np.zeros(1)}
start = 0
os.makedirs(out_dir, exist_ok=True)
ckpt = os.path.join(out_dir, "ckpt.npz")
if os.path.exists(ckpt):  # resume where the last attempt stopped
    saved = np.load(ckpt)
    params = {k: saved[k] for k in params}
    start = int(saved["iter"])
    print(f"resumed from {ckpt} at iteration {start}")


def loss_and_grads(p):
    h = np.tanh(x @ p["w1"] + p["b1"])
    pred = h @ p["w2"] + p["b2"]
    err = pred - y
    loss = float(np.mean(err ** 2))
    d = 2 * err / len(x)
    dh = (d @ p["w2"].T) * (1 - h ** 2)
    return loss, {"w2": h.T @ d, "b2": d.sum(0), "w1": x.T @ dh, "b1": dh.sum(0)}


def save(it):
    tmp = ckpt + ".tmp.npz"
    np.savez(tmp, iter=it, **params)
    os.replace(tmp, ckpt)  # a kill never leaves half a checkpoint


t0 = time.time()
loss = float("nan")
for it in range(start, max_iters):
    loss, grads = loss_and_grads(params)
    if not math.isfinite(loss) or loss > diverge_loss:
        print(f"iter {it}: loss {loss:.4g}: diverged (lr={lr})", file=sys.stderr)
        sys.exit(2)
    for k in params:
        params[k] -= lr * grads[k]
    if it % eval_interval == 0:
        print(f"iter {it}: loss {loss:.5f}", flush=True)
    if (it + 1) % ckpt_interval == 0:
        save(it + 1)
save(max_iters)
metrics = {"loss": loss, "iters": max_iters, "lr": lr, "hidden": hidden, "seed": seed,
           "seconds": round(time.time() - t0, 3)}
with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
    json.dump(metrics, fh, indent=2)
print(f"done: loss {loss:.5f} after {max_iters} iterations")
