#!/usr/bin/env python3
"""tools/ncu_summary.py against the ncu CSV of an H200 run (tests/fixtures/
ncu_h200_tinyllama_4layers.csv: the TinyLlama shape cut to 4 layers, T=4096,
2 steps; docs/gpu.md). The expected shares are recomputed here from the raw
rows with the csv module alone; bad inputs exit 2 with a message.
usage: check_ncu_summary.py SOURCE_DIR"""
import csv, json, os, subprocess, sys, tempfile

src = sys.argv[1]
tool = os.path.join(src, "tools", "ncu_summary.py")
fixture = os.path.join(src, "tests", "fixtures", "ncu_h200_tinyllama_4layers.csv")
failures = []

# independent sums: nanoseconds per kernel family, straight from the rows
with open(fixture, newline="") as f:
    rows = list(csv.reader(l for l in f if l.startswith('"')))
head, rows = rows[0], rows[1:]
name_i, val_i = head.index("Kernel Name"), head.index("Metric Value")
ns = [(r[name_i], float(r[val_i].replace(",", ""))) for r in rows]
total = sum(v for _, v in ns)
gemm = sum(v for n, v in ns if n.startswith("nvjet"))
bwd = sum(v for n, v in ns if "attn_bwd_kernel<" in n)

with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "s.json")
    p = subprocess.run([sys.executable, tool, fixture, "--steps", "2", "--json", out],
                       capture_output=True, text=True)
    print(p.stdout, p.stderr)
    if p.returncode != 0:
        failures.append(f"rc {p.returncode}")
    else:
        s = json.load(open(out))
        g = {x["kernel"]: x for x in s["groups"]}
        checks = [
            (s["kernels"] == len(ns), f"kernels {s['kernels']} != {len(ns)}"),
            (abs(s["ms_per_step"] - total / 2e6) < 1e-9, "ms per step"),
            (abs(g["GEMM (cuBLASLt)"]["share"] - gemm / total) < 1e-12, "GEMM share"),
            (abs(g["rt::<unnamed>::attn_bwd_kernel<64, 8, 64>"]["share"] - bwd / total) < 1e-12,
             "attention backward share"),
            (g["rt::<unnamed>::attn_bwd_kernel<64, 8, 64>"]["largest_grid"] == "(32, 4, 1)", "grid"),
            (s["groups"][0]["kernel"] == "GEMM (cuBLASLt)", "largest group first"),
            (abs(sum(x["share"] for x in s["groups"]) - 1) < 1e-12, "shares sum to 1"),
        ]
        failures += [msg for ok, msg in checks if not ok]

    # bad inputs: exit 2 and say why
    empty = os.path.join(d, "empty.csv")
    open(empty, "w").close()
    other = os.path.join(d, "other.csv")
    with open(other, "w") as f:
        f.write('"ID","Kernel Name","Grid Size","Metric Name","Metric Unit","Metric Value"\n'
                '"0","k","(1, 1, 1)","sm__cycles_elapsed.avg","cycle","10"\n')
    for path, words in [(empty, "no CSV rows"), (other, "no gpu__time_duration.sum"),
                        (os.path.join(d, "missing.csv"), "No such file")]:
        p = subprocess.run([sys.executable, tool, path], capture_output=True, text=True)
        if p.returncode != 2 or words not in p.stderr:
            failures.append(f"{os.path.basename(path)}: rc {p.returncode}, stderr {p.stderr!r}")

if failures:
    print("FAIL:", "; ".join(failures))
    sys.exit(1)
print("check_ncu_summary: all checks passed")
