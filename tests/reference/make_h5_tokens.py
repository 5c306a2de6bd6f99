#!/usr/bin/python3
"""Writes a token file with h5py, as a user outside ringtrain would.

Usage: make_h5_tokens.py OUT.h5 TEXT [--fixed-string] [--uint32]

/tokens = the bytes of TEXT, root attributes vocab_size=256 and
tokenizer="bytes" (a variable-length string, h5py's default for str; a
fixed-length one with --fixed-string), /doc_offsets = [0, len(TEXT) // 2].
Used by tests/data/test_data_formats.cpp to check that h5py files load.
"""
import sys

import h5py
import numpy as np


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    out, text = args
    tokens = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    dtype = np.uint32 if "--uint32" in flags else np.uint16
    with h5py.File(out, "w") as f:
        f.create_dataset("tokens", data=tokens.astype(dtype))
        f.create_dataset("doc_offsets", data=np.array([0, len(tokens) // 2], dtype=np.uint64))
        f.attrs["vocab_size"] = 256
        if "--fixed-string" in flags:
            f.attrs["tokenizer"] = np.bytes_("bytes")
        else:
            f.attrs["tokenizer"] = "bytes"


if __name__ == "__main__":
    main()
