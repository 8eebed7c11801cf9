"""Hugging Face transformers: a default Bayesian policy, an ELBO `Trainer`, and saving and loading.

`BayesianModule` already works on any transformers model (Linear and GPT-2's ``Conv1D`` layers,
tied embeddings, keyword inputs, ``ModelOutput`` results); this module adds what is specific to
transformers. Importing it imports ``transformers`` and ``safetensors``; ``from torchbayesian import
bnn`` does not, and loads these names on first use.

Tie, resize (``resize_token_embeddings``) and load weights **before** converting a model. After
conversion a tied weight is held by one shared posterior, and transformers' ``tie_weights`` no
longer finds the parameters it ties (it raises an error).
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.utils import can_return_loss, find_labels

from torchbayesian import __version__
from torchbayesian._sampling import reuse_samples
from torchbayesian._selection import Filters, as_patterns
from torchbayesian._validation import non_negative_finite, positive_int
from torchbayesian.integrations._tied_state import missing_untied, unshared
from torchbayesian.kl import kl_divergence
from torchbayesian.module import BayesianModule
from torchbayesian.predict import predict
from torchbayesian.registration import is_bayesian

__all__ = ["BayesianTrainer", "load_bayesian", "save_bayesian", "transformer_policy"]

WEIGHTS_NAME = "model.safetensors"


def transformer_policy(model: nn.Module, *, embeddings: bool = False, exclude: Filters = None) -> dict[str, Any]:
    """Return the conversion filters of the default policy for a transformer, to pass as ``**kwargs``.

    The policy, on top of the `BayesianModule` rules:

    - every weight and bias of the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) and of any
      other layer is Bayesian: attention projections, feed-forward blocks, pooler and heads;
    - normalization layers (``LayerNorm``, ``T5LayerNorm``, ``RMSNorm``...) stay deterministic;
    - embeddings (every ``nn.Embedding`` and subclass: word, position, token-type, T5's relative
      attention bias) stay deterministic unless ``embeddings=True``. They hold most of a small
      model's parameters (11.7M of MiniLM-L6's 22.7M) and a Bayesian copy doubles their memory,
      while the uncertainty that matters for fine-tuning sits in the layers above them.

    A weight tied to an embedding (BERT's MLM decoder, GPT-2's and T5's ``lm_head``) is one
    tensor: it follows ``embeddings`` under all its names, and with ``embeddings=True`` it gets one
    posterior with one sample per forward.

    Args:
        model (nn.Module): The transformer to convert (not yet Bayesian).
        embeddings (bool): Make the embeddings, and the weights tied to them, Bayesian.
        exclude (type | str | Sequence | None): More filters to keep deterministic (module types or
            globs on parameter or module names, as in `BayesianModule`).

    Returns:
        dict[str, Any]: ``{"exclude": [...]}``, the keyword arguments for `BayesianModule` or
        ``to_bayesian``.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``exclude`` has the wrong type.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> from torchbayesian import bnn
        >>> config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=16)
        >>> model = BertForSequenceClassification(config)
        >>> model = bnn.BayesianModule(model, **bnn.transformer_policy(model))
        >>> bnn.is_bayesian(model.module.bert.embeddings.word_embeddings)
        False
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"transformer_policy expects an nn.Module, got {type(model).__name__}.")
    filters = as_patterns(exclude, "exclude")
    if embeddings:
        return {"exclude": filters}
    return {"exclude": [*filters, *_names_tied_to_embeddings(model)]}


def _names_tied_to_embeddings(model: nn.Module) -> list[str]:
    names: dict[nn.Parameter, list[str]] = {}
    embedded: set[nn.Parameter] = set()
    for module_name, owner in model.named_modules(remove_duplicate=False):
        for tensor_name, param in owner._parameters.items():
            if param is None:
                continue
            names.setdefault(param, []).append(f"{module_name}.{tensor_name}" if module_name else tensor_name)
            if isinstance(owner, nn.Embedding):
                embedded.add(param)
    return [name for param in embedded for name in dict.fromkeys(names[param])]


class BayesianTrainer(Trainer):
    """Fine-tune a `BayesianModule` that wraps a transformers model with the Hugging Face `Trainer`.

    The training loss is the negative ELBO per training example:

    $$\\mathcal{L} = \\frac{1}{S} \\sum_{s=1}^{S} \\ell(w_s) + \\beta \\, \\frac{\\mathrm{KL}(q \\,\\|\\, p)}{N},
    \\qquad w_s \\sim q,$$

    where $\\ell(w_s)$ is the model's own loss (a mean over the batch) for the $s$-th of
    $S$ = ``num_mc_samples`` forward passes, each with fresh weights, $N$ = ``dataset_size`` and
    $\\beta$ = ``kl_temperature``. The ELBO sums the expected log-likelihood over all $N$ examples and
    subtracts the KL once; dividing it by $N$ gives a per-example objective whose data term the
    batch mean estimates without bias, so the KL must be divided by $N$ too, not by the batch size
    or the number of steps. For a language-model loss averaged over tokens, pass the number of
    training tokens as ``dataset_size``.

    Evaluation (`evaluate`, `predict`) reports the expected loss $\\frac{1}{S}\\sum_s \\ell(w_s)$
    without the KL, and returns the outputs of the last sample; freeze the model
    (`BayesianModule.freeze`) for deterministic predictions at the posterior mean.

    Note:
        ``TrainingArguments.max_grad_norm`` (1.0 by default) clips the norm of **all** gradients
        together. The KL gradient of millions of posterior scales can dominate that norm, so that
        clipping shrinks the data gradient of the means to almost nothing and the model stops
        learning; pass ``max_grad_norm=0`` (Adam already adapts its steps to each parameter's
        scale) or a much larger threshold.

    Everything else is the ordinary `Trainer`: the model's forward signature, label names and
    ``remove_unused_columns`` are read from the wrapped model. Checkpoints are a safetensors
    ``model.safetensors`` of the wrapper's ``state_dict`` with each tied tensor stored under every
    name (safetensors refuses shared tensors), plus the wrapped model's ``config.json``; the
    Trainer's ``resume_from_checkpoint`` and ``load_best_model_at_end`` read it back, and
    `load_bayesian` loads it into a freshly converted model.

    Args:
        model (BayesianModule): The converted model (e.g. from ``to_bayesian`` or `BayesianModule`).
        args (TrainingArguments | None): Training arguments, as for `Trainer`.
        *trainer_args: More positional arguments of `Trainer` (``data_collator``, ``train_dataset``...).
        num_mc_samples (int): Forward passes averaged per step, $S$.
        dataset_size (int | None): Number of training examples $N$; ``len(train_dataset)`` by default.
        kl_temperature (float): Multiplier $\\beta$ of ``KL / N``, a finite number >= 0 (1 for the ELBO;
            smaller values temper it, 0 drops it), named as in `BayesianLightningModule` and the guide
            "Getting good uncertainty".
        kl_weight (float | None): Deprecated name of ``kl_temperature``; passing it warns.
        num_eval_samples (int): Weight samples averaged in evaluation and ``Trainer.predict``
            (`bnn.predict`, vectorised where possible). The returned logits are the log of the
            Monte Carlo mean probability $\\log \\frac{1}{S}\\sum_s \\mathrm{softmax}(z_s)$, so
            ``compute_metrics`` sees the predictive distribution; for sequence classification (logits
            ``[batch, classes]``, integer labels) ``eval_loss`` is its negative log-likelihood,
            otherwise the mean of the model's losses over the samples. ``1`` evaluates one sample
            as the plain `Trainer` does.
        **trainer_kwargs: More keyword arguments of `Trainer` (``train_dataset``, ``eval_dataset``,
            ``compute_metrics``...).

    Raises:
        TypeError: If ``model`` is not a `BayesianModule`.
        ValueError: If the model holds no posterior, a number is out of range, or ``args`` asks for
            label smoothing or ``compute_loss_func`` is given (the loss must come from the model).

    Example:
        >>> import tempfile, torch
        >>> from transformers import BertConfig, BertForSequenceClassification, PrinterCallback, TrainingArguments
        >>> from torchbayesian import bnn
        >>> config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=16)
        >>> hf_model = BertForSequenceClassification(config)
        >>> model = bnn.BayesianModule(hf_model, **bnn.transformer_policy(hf_model))
        >>> data = [{"input_ids": torch.randint(0, 50, (6,)), "labels": torch.tensor(i % 2)} for i in range(8)]
        >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=4,
        ...                          report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
        >>> trainer = bnn.BayesianTrainer(model, args, train_dataset=data, num_mc_samples=2)
        >>> trainer.remove_callback(PrinterCallback)  # keep this example quiet
        >>> trainer.train().global_step
        2
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: BayesianModule,
        args: TrainingArguments | None = None,
        *trainer_args: Any,
        num_mc_samples: int = 1,
        dataset_size: int | None = None,
        kl_temperature: float = 1.0,
        num_eval_samples: int = 8,
        kl_weight: float | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        if not isinstance(model, BayesianModule):
            raise TypeError(
                f"BayesianTrainer expects a BayesianModule, got {type(model).__name__}; "
                "convert the model first with bnn.BayesianModule(model) or bnn.to_bayesian(model)."
            )
        if not is_bayesian(model):
            raise ValueError(f"BayesianTrainer: the {type(model.module).__name__} holds no posterior to train.")
        self.num_mc_samples = positive_int("BayesianTrainer", "num_mc_samples", num_mc_samples)
        self.num_eval_samples = positive_int("BayesianTrainer", "num_eval_samples", num_eval_samples)
        if dataset_size is not None:
            positive_int("BayesianTrainer", "dataset_size", dataset_size)
        self.dataset_size = dataset_size
        if kl_weight is not None:
            if kl_temperature != 1.0:
                raise TypeError("BayesianTrainer: pass kl_temperature only (kl_weight is its deprecated name).")
            warnings.warn("BayesianTrainer: kl_weight is renamed kl_temperature (the multiplier of KL / N); "
                          "kl_weight will be removed.", FutureWarning, stacklevel=2)
            kl_temperature = kl_weight
        self.kl_temperature = non_negative_finite("BayesianTrainer", "kl_temperature", kl_temperature)
        if trainer_kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "BayesianTrainer: compute_loss_func is not supported; the data term is the loss the model "
                "returns when given labels (override compute_loss for another likelihood)."
            )
        if args is not None and args.label_smoothing_factor != 0:
            raise ValueError(
                "BayesianTrainer: label_smoothing_factor must be 0; the data term is the model's own loss."
            )
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        wrapped = _inspected(model)
        self.model_accepts_loss_kwargs = False
        if self.args.label_names is None:
            self.label_names = find_labels(type(wrapped))
        self.can_return_loss = can_return_loss(type(wrapped))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Return the mean model loss over ``num_mc_samples`` forwards, plus ``kl_temperature * KL / dataset_size`` in training."""
        losses = []
        outputs = None
        for _ in range(self.num_mc_samples):
            with reuse_samples():
                outputs = model(**inputs)
            losses.append(_loss_of(outputs, type(self.model.module).__name__))
        loss = torch.stack(losses).mean()
        if model.training:
            loss = loss + self.kl_temperature * kl_divergence(model) / self._dataset_size()
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Return the evaluation loss, Monte Carlo averaged logits and labels of one batch (see ``num_eval_samples``)."""
        if self.num_eval_samples == 1:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = [inputs.get(name) for name in self.label_names]
        label = labels[0] if len(labels) == 1 else None
        with torch.no_grad():
            outputs = predict(model, **inputs, num_samples=self.num_eval_samples)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            raise ValueError(
                f"BayesianTrainer: {type(self.model.module).__name__} returned no logits to average; "
                "pass num_eval_samples=1 to evaluate one sample with the plain Trainer."
            )
        log_predictive = torch.logsumexp(logits.float().log_softmax(-1), dim=0) - math.log(logits.shape[0])
        if label is not None and logits.dim() == 3 and label.dim() == 1 and not label.is_floating_point():
            loss = torch.nn.functional.nll_loss(log_predictive, label, ignore_index=-100)
        else:
            loss = _loss_of(outputs, type(self.model.module).__name__).mean()
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), log_predictive, label if label is not None else tuple(labels) or None

    def _dataset_size(self) -> int:
        if self.dataset_size is not None:
            return self.dataset_size
        try:
            return positive_int("BayesianTrainer", "len(train_dataset)", len(self.train_dataset))
        except TypeError:
            raise ValueError(
                "BayesianTrainer: the training set has no length; pass dataset_size=<number of examples> "
                "to scale the KL divergence."
            ) from None

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            columns = list(inspect.signature(_inspected(self.model).forward).parameters)
            self._signature_columns = list(dict.fromkeys([*columns, "label", "label_ids", *self.label_names]))

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Tensor] | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.model.state_dict()
        super()._save(output_dir, state_dict=unshared(state_dict))
        if self.args.should_save and isinstance(self.model.module, PreTrainedModel):
            self.model.module.config.save_pretrained(output_dir)


def save_bayesian(model: nn.Module, save_directory: str | os.PathLike[str]) -> str:
    """Save a Bayesian transformer's variational parameters, priors and config to a directory.

    Writes ``model.safetensors`` with the ``state_dict`` of the converted model (of
    ``model.module`` for a `BayesianModule`), each tied tensor stored once, and the model's
    ``config.json`` when it has a transformers config. To load it, rebuild the architecture from
    the config, convert it with the same arguments and call `load_bayesian`; the values the
    conversion puts in the posteriors and priors are all overwritten.

    Args:
        model (nn.Module): A `BayesianModule` or a model holding posteriors.
        save_directory (str | os.PathLike): Directory to write to; created if needed.

    Returns:
        str: The path of the weights file.

    Example:
        >>> import tempfile, torch
        >>> from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig
        >>> from torchbayesian import bnn
        >>> config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=16)
        >>> model = bnn.BayesianModule(AutoModelForMaskedLM.from_config(config))
        >>> directory = tempfile.mkdtemp()
        >>> _ = bnn.save_bayesian(model, directory)
        >>> fresh = bnn.BayesianModule(AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(directory)))
        >>> bnn.load_bayesian(fresh, directory)
        >>> ids = torch.randint(0, 50, (1, 5))
        >>> _ = model.eval(), fresh.eval()  # no dropout
        >>> with bnn.frozen(model), bnn.frozen(fresh):
        ...     torch.equal(model(input_ids=ids).logits, fresh(input_ids=ids).logits)
        True
    """
    target = model.module if isinstance(model, BayesianModule) else model
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, WEIGHTS_NAME)
    safetensors.torch.save_model(target, path, metadata={"format": "pt", "torchbayesian": __version__})
    config = getattr(target, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(save_directory)
    return path


def load_bayesian(model: nn.Module, save_directory: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Load the state written by `save_bayesian` or a `BayesianTrainer` checkpoint into a converted model.

    ``model`` must be converted the way the saved model was (same architecture, posterior class
    and filters). Tensors tied in ``model`` may be stored under one of their names only.

    Args:
        model (nn.Module): A `BayesianModule` or a model holding posteriors.
        save_directory (str | os.PathLike): Directory holding ``model.safetensors``.
        strict (bool): Raise if a tensor of ``model`` is missing from the file or the file has
            tensors ``model`` lacks.

    Raises:
        FileNotFoundError: If the directory has no ``model.safetensors``.
        ValueError: If ``strict`` and the keys do not match.
    """
    target = model.module if isinstance(model, BayesianModule) else model
    path = os.path.join(save_directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_bayesian: no {WEIGHTS_NAME} in {os.fspath(save_directory)!r}.")
    state = safetensors.torch.load_file(path)
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    result = target.load_state_dict(state, strict=False)
    expected = target.state_dict()
    missing = missing_untied(expected, state, result.missing_keys)
    if strict and (missing or result.unexpected_keys):
        raise ValueError(
            f"load_bayesian: {path} does not match the converted {type(target).__name__}; convert it with the "
            "arguments used before saving.\n"
            f"missing: {missing}\nunexpected: {result.unexpected_keys}"
        )


def _inspected(model: BayesianModule) -> nn.Module:
    """The model whose forward signature names the inputs: the base model of a PEFT model."""
    wrapped = model.module
    base = getattr(wrapped, "get_base_model", None)
    return base() if callable(base) else wrapped


def _loss_of(outputs: Any, model_name: str) -> Tensor:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs[0]
    if loss is None:
        raise ValueError(
            f"BayesianTrainer: {model_name} returned no loss; its inputs must include the labels "
            "(check the dataset columns and TrainingArguments.label_names)."
        )
    return loss
