#!/usr/bin/python3
"""Writes or checks a ringtrain checkpoint with h5py, as a user outside ringtrain would.

Usage:
  make_h5_checkpoint.py write OUT.h5 SPECS.txt [--fixed-string] [--float64] [--config=CFG.yaml]
  make_h5_checkpoint.py check CKPT.h5

write: a weights-only checkpoint (SPEC §8). SPECS.txt has one parameter per
line, "name d0 d1 ...". Parameter k (0-based line) holds
value[i] = (i % 97) * 0.0625 - 3.0 + k * 0.5 (exact in float32), in float32, or
float64 for 1-D tensors with --float64. Root attributes: format="ringtrain",
format_version=1, step=7, tokens_seen=1234, config="model: {}\n" or the text of
CFG.yaml with --config (strings are variable-length, h5py's default;
fixed-length with --fixed-string).

check: asserts a file written by ringtrain reads in h5py as the layout says:
str attributes, int attributes, float32 /model datasets with Fletcher32.
"""
import sys

import h5py
import numpy as np


def write(out, specs_path, flags):
    with open(specs_path) as f:
        specs = [line.split() for line in f if line.strip()]
    with h5py.File(out, "w") as f:
        for k, (name, *dims) in enumerate(specs):
            shape = tuple(int(d) for d in dims)
            n = int(np.prod(shape))
            v = (np.arange(n) % 97).astype(np.float64) * 0.0625 - 3.0 + k * 0.5
            dtype = np.float64 if ("--float64" in flags and len(shape) == 1) else np.float32
            f.create_dataset("model/" + name, data=v.reshape(shape).astype(dtype))
        config = "model: {}\n"
        for flag in flags:
            if flag.startswith("--config="):
                with open(flag[len("--config="):]) as c:
                    config = c.read()
        if "--fixed-string" in flags:
            f.attrs["format"] = np.bytes_("ringtrain")
            f.attrs["config"] = np.bytes_(config)
        else:
            f.attrs["format"] = "ringtrain"
            f.attrs["config"] = config
        f.attrs["format_version"] = 1
        f.attrs["step"] = 7
        f.attrs["tokens_seen"] = 1234


def check(path):
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "ringtrain", repr(f.attrs["format"])
        assert isinstance(f.attrs["config"], str), type(f.attrs["config"])
        assert int(f.attrs["format_version"]) == 1
        assert int(f.attrs["step"]) > 0 and int(f.attrs["tokens_seen"]) > 0
        assert isinstance(f["trainer"].attrs["state"], str)
        names = list(f["model"].keys())
        assert "model.embed_tokens.weight" in names, names
        for name in names:
            d = f["model"][name]
            assert d.dtype == np.float32, (name, d.dtype)
            assert d.fletcher32, name
            d[()]
        assert int(f["optimizer"].attrs["step"]) >= 1
        assert set(f["optimizer/exp_avg"].keys()) == set(names)
    print("ok")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    if args[0] == "write":
        write(args[1], args[2], flags)
    elif args[0] == "check":
        check(args[1])
    else:
        sys.exit("usage: make_h5_checkpoint.py write|check ...")


if __name__ == "__main__":
    main()
