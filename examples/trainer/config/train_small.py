# a small run: plain assignments, read by train.py before the --key=value overrides
hidden = 16
max_iters = 1000
eval_interval = 250
ckpt_interval = 250
