"""What the CLI scripts read back from run directories (imported by their
inline Python: sys.path gets tests/cli first)."""
import json


def losses(run_dir):
    """The per-step training losses of RUN_DIR/metrics.jsonl, in order."""
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(l)["loss"] for l in f if '"loss"' in l]


def state(checkpoint):
    """A checkpoint's weights and AdamW moments: {"model/NAME" | "exp_avg/NAME" |
    "exp_avg_sq/NAME": array}."""
    import h5py  # here: losses() works where h5py is missing

    with h5py.File(checkpoint) as f:
        out = {"model/" + k: f["model"][k][()] for k in f["model"]}
        for g in ["exp_avg", "exp_avg_sq"]:
            out.update({f"{g}/{k}": f["optimizer"][g][k][()] for k in f["optimizer"][g]})
        return out
