"""The variational feature encoder (VFE) head, as in the reference work.

Stage 1 fits a VAE on the backbone's pooled features:
    encoder  Dense(256, relu) -> BatchNorm -> z_mean, z_log_var = Dense(latent), Dense(latent)
    decoder  Dense(512, relu) -> BatchNorm -> Dense(n_features, relu)
    loss     recon_weight * MSE (mean over features, then batch) + beta * KL (mean over batch AND latent dims)
Stage 2 freezes the encoder (BatchNorm in inference mode) and trains Dropout -> Dense(classes) on a
*sampled* z (`classifier_input="sample"`, the reference) or on z_mean.

At prediction time: `predict_mode="sample"` draws one z (the reference), "mean" uses z_mean,
"average" averages the class probabilities of `n_samples` draws.

Augmented training (`fit(X, y, X_aug=...)`): the views join both stages' training rows; with K views per
image (X_aug n x K x d, e.g. AugMix views) stage 2 trains on (clean, view, view) triples, plus
`js_weight` times AugMix's Jensen-Shannon consistency term (vfe.heads.views).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from vfe.heads.base import (
    NON_NEGATIVE,
    POSITIVE,
    PRECISIONS,
    TRAINING,
    FeatureTransformer,
    TorchHead,
    at_least,
    batched_numpy,
    fit_classifier,
)
from vfe.heads.views import fit_on_views
from vfe.training import TrainConfig, train
from vfe.vae import gaussian_kl, reparameterise

PREDICT_MODES = ("sample", "mean", "average")


class FeatureEncoder(nn.Module):
    def __init__(self, n_features: int, hidden: int, latent_dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.BatchNorm1d(hidden))
        self.z_mean = nn.Linear(hidden, latent_dim)
        self.z_log_var = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.z_mean(h), self.z_log_var(h)


def feature_decoder(latent_dim: int, decoder_units: int, n_features: int) -> nn.Sequential:
    """Dense(decoder_units, relu) -> BatchNorm -> Dense(n_features, relu): the reference decoder (pooled
    features are non-negative, hence the final ReLU)."""
    return nn.Sequential(nn.Linear(latent_dim, decoder_units), nn.ReLU(), nn.BatchNorm1d(decoder_units),
                         nn.Linear(decoder_units, n_features), nn.ReLU())


class FeatureVAE(nn.Module):
    def __init__(self, n_features: int, encoder_units: int, latent_dim: int, decoder_units: int):
        super().__init__()
        self.encoder = FeatureEncoder(n_features, encoder_units, latent_dim)
        self.decoder = feature_decoder(latent_dim, decoder_units, n_features)

    def forward(self, x: torch.Tensor):
        mu, log_var = self.encoder(x)
        return self.decoder(reparameterise(mu, log_var)), mu, log_var


def vae_loss(recon_weight: float, beta: float):
    """The reference loss; returns a training-loop loss function reporting `mse` and `kl` too."""
    def loss_fn(vae: nn.Module, batch):
        (x,) = batch
        recon, mu, log_var = vae(x)
        mse = (recon - x).pow(2).mean()
        kl = gaussian_kl(mu, log_var).mean()
        return recon_weight * mse + beta * kl, {"mse": float(mse.detach()), "kl": float(kl.detach())}
    return loss_fn


class LatentClassifier(nn.Module):
    """Encoder -> z (sampled or mean) -> Dropout -> Dense. Returns logits, or log mean-probs.

    The VFE freezes its encoder here (`freeze_encoder=True`); the VIB trains both together.
    """

    def __init__(self, encoder: FeatureEncoder, n_classes: int, dropout: float, classifier_input: str,
                 freeze_encoder: bool = True):
        super().__init__()
        self.encoder = encoder
        self.classifier_input = classifier_input
        self.freeze_encoder = freeze_encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.z_mean.out_features, n_classes))
        if freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> LatentClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def forward(self, x: torch.Tensor, mode: str | None = None, n_samples: int = 1) -> torch.Tensor:
        mode = mode or self.classifier_input
        mu, log_var = self.encoder(x)
        if mode == "mean":
            return self.head(mu)
        if mode == "sample":
            return self.head(reparameterise(mu, log_var))
        # "average": log of the mean probability over n_samples draws (one encoder pass)
        z = reparameterise(mu.expand(n_samples, *mu.shape), log_var.expand(n_samples, *log_var.shape))
        probs = torch.softmax(self.head(z), -1).mean(0)
        return probs.clamp_min(1e-12).log()


class VFEHead(FeatureTransformer, TorchHead):
    """Variational feature encoder + latent classifier. Defaults are the reference's numbers.

    The reference trains the VAE for a fixed 2000 epochs; here `vae_epochs` is a cap and training
    stops when the validation loss has not improved for `vae_patience` epochs (best weights restored).
    `vae_precision="auto"` trains the VAE under bf16 autocast where the hardware runs bf16 natively
    (1.45x faster per epoch here, same validation MSE curve; benchmarks/bench_vfe_training.py).
    """

    takes_views = True  # X_aug n x K x d: stage 2 trains on (clean, view, view) triples (vfe.heads.views)
    _parameter_constraints: ClassVar[dict] = {
        **TRAINING, "encoder_units": [at_least(1)], "latent_dim": [at_least(1)], "decoder_units": [at_least(1)],
        "recon_weight": [NON_NEGATIVE], "beta": [NON_NEGATIVE], "vae_epochs": [at_least(1)],
        "vae_batch_size": [at_least(1)], "vae_lr": [POSITIVE], "vae_patience": [at_least(1), None],
        "vae_schedule": [StrOptions({"cosine", "plateau"}), None], "vae_precision": [PRECISIONS],
        "classifier_input": [StrOptions({"sample", "mean"})], "predict_mode": [StrOptions(set(PREDICT_MODES))],
        "n_samples": [at_least(1)], "js_weight": [NON_NEGATIVE]}

    def __init__(self, encoder_units: int = 256, latent_dim: int = 256, decoder_units: int = 512,
                 recon_weight: float = 1000.0, beta: float = 1.0, vae_epochs: int = 2000,
                 vae_batch_size: int = 128, vae_lr: float = 1e-3, vae_patience: int | None = 20,
                 vae_schedule: str | None = None, vae_precision: str = "auto", dropout: float = 0.3,
                 classifier_input: str = "sample", epochs: int = 50, batch_size: int = 128, lr: float = 1e-3,
                 patience: int | None = 5, predict_mode: str = "sample", n_samples: int = 10,
                 validation_fraction: float = 0.1, js_weight: float = 0.0, random_state: int = 0,
                 device: str = "cpu", verbose: bool = False):
        self.encoder_units = encoder_units
        self.latent_dim = latent_dim
        self.decoder_units = decoder_units
        self.recon_weight = recon_weight
        self.beta = beta
        self.vae_epochs = vae_epochs
        self.vae_batch_size = vae_batch_size
        self.vae_lr = vae_lr
        self.vae_patience = vae_patience
        self.vae_schedule = vae_schedule
        self.vae_precision = vae_precision
        self.dropout = dropout
        self.classifier_input = classifier_input
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.predict_mode = predict_mode
        self.n_samples = n_samples
        self.validation_fraction = validation_fraction
        self.js_weight = js_weight
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.predict_mode != "mean"  # sampled z: a row's draw depends on its position
        return tags

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        """A fresh VAE (`vae_`) and the classifier on its encoder; the encoder is frozen in the latter."""
        if self.classifier_input not in ("sample", "mean"):
            raise ValueError(f"classifier_input must be 'sample' or 'mean', got {self.classifier_input!r}")
        if self.predict_mode not in PREDICT_MODES:
            raise ValueError(f"predict_mode must be one of {PREDICT_MODES}, got {self.predict_mode!r}")
        self.vae_ = FeatureVAE(n_features, self.encoder_units, self.latent_dim, self.decoder_units)
        return LatentClassifier(self.vae_.encoder, n_classes, self.dropout, self.classifier_input)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_aug: np.ndarray | None = None) -> None:
        (X_train, y_train), val = self._split(X, y, X_aug)  # augmented views train both stages
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            self.module_ = self._build(X.shape[1], len(self.classes_))
        for p in self.vae_.parameters():  # stage 1 trains the whole VAE
            p.requires_grad_(True)
        vae_config = TrainConfig(epochs=self.vae_epochs, batch_size=self.vae_batch_size, lr=self.vae_lr,
                                 patience=self.vae_patience, schedule=self.vae_schedule,
                                 precision=self.vae_precision,
                                 seed=self.random_state, device=self.device, progress=self.verbose,
                                 desc="VFE (feature VAE)")
        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            vae_history = train(self.vae_, vae_loss(self.recon_weight, self.beta), (torch.from_numpy(X_train),),
                                (torch.from_numpy(val[0]),) if val is not None else None, vae_config)
        for p in self.vae_.encoder.parameters():  # stage 2: the encoder is frozen
            p.requires_grad_(False)
        config = self._train_config(desc="VFE classifier")
        if X_aug is not None and X_aug.ndim == 3:  # K views per image: (clean, view, view) triples
            train_idx, _ = self._validation_indices(y)
            clf_history = fit_on_views(self.module_, X[train_idx], X_aug[train_idx], y[train_idx], val, config,
                                       self.js_weight, parameters=self.module_.head.parameters())
        else:
            clf_history = fit_classifier(self.module_, X_train, y_train, val, config,
                                         parameters=self.module_.head.parameters())
        self.vae_.cpu().eval()
        self.module_.cpu().eval()
        self.history_ = {"vae": vae_history.to_dict(), "classifier": clf_history.to_dict()}

    def _get_state(self) -> dict[str, torch.Tensor]:
        return {**{f"vae.{k}": v for k, v in self.vae_.state_dict().items()},
                **{f"head.{k}": v for k, v in self.module_.head.state_dict().items()}}

    def _set_state(self, tensors: dict[str, torch.Tensor], n_features: int) -> None:
        self.module_ = self._build(n_features, len(self.classes_))
        self.vae_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")})
        self.module_.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.vae_.eval()
        self.module_.eval()

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return latent_predict_proba(self.module_, X, self.predict_mode, self.n_samples, self.random_state)

    def transform(self, X) -> np.ndarray:
        """The latent code z_mean (the VFE's compact representation of each feature vector)."""
        X = self._validated(X)
        return batched_numpy(lambda x: self.vae_.encoder(x)[0], X)

    def reconstruction_error(self, X) -> np.ndarray:
        """Per-sample MSE between features and their reconstruction from z_mean (an OOD score)."""
        X = self._validated(X)
        return batched_numpy(lambda x: (self.vae_.decoder(self.vae_.encoder(x)[0]) - x).pow(2).mean(1), X)

    def negative_elbo(self, X, n_samples: int = 8) -> np.ndarray:
        """Per-sample training loss (recon_weight * MSE + beta * KL), averaged over sampled z; an OOD score."""
        X = self._validated(X)

        def per_sample(x: torch.Tensor) -> torch.Tensor:
            mu, log_var = self.vae_.encoder(x)
            kl = gaussian_kl(mu, log_var).mean(1)
            mse = torch.stack([(self.vae_.decoder(reparameterise(mu, log_var)) - x).pow(2).mean(1)
                               for _ in range(n_samples)]).mean(0)
            return self.recon_weight * mse + self.beta * kl

        with torch.random.fork_rng():
            torch.manual_seed(self.random_state)
            return batched_numpy(per_sample, X)

    def _validated(self, X) -> np.ndarray:
        check_is_fitted(self, "classes_")
        self.vae_.eval()
        return validate_data(self, X, dtype=np.float32, reset=False)

    def probability_module(self) -> nn.Module:
        """Features -> class probabilities through the path a user runs (sampling included), for attacks."""
        return LatentProbabilities(self.module_, self.predict_mode, self.n_samples)


def latent_predict_proba(classifier: LatentClassifier, X: np.ndarray, mode: str, n_samples: int,
                         seed: int) -> np.ndarray:
    """Class probabilities from z_mean ("mean"), one draw ("sample") or `n_samples` draws averaged."""
    classifier.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # a sampled prediction is repeatable for a given seed
        logits = batched_numpy(lambda x: classifier(x, mode, n_samples), X)
    return torch.softmax(torch.from_numpy(logits), 1).numpy()


class LatentProbabilities(nn.Module):
    def __init__(self, classifier: LatentClassifier, mode: str, n_samples: int):
        super().__init__()
        self.classifier, self.mode, self.n_samples = classifier, mode, n_samples

    def forward(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        if n_samples is not None and self.mode != "mean":
            return self.classifier(features, "average", n_samples).exp()
        return torch.softmax(self.classifier(features, self.mode, self.n_samples), -1)
