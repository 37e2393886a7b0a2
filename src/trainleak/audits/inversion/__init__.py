"""Split-computing inversion: rebuild inputs from the features a device sends.

Methods: ``optimize`` (input optimisation with image priors), ``dci``
(data-free divide-and-conquer inversion, Dong et al. 2021/2022; block
inputs from noise or from a generator fitted to batch-norm statistics) and
``decoder`` (an inverse network trained on the attacker's own images).
"""

from trainleak.audits.inversion.audit import InversionResult, InvertConfig, invert
from trainleak.audits.inversion.dci import DCIInverter
from trainleak.audits.inversion.decoder import DecoderInverter
from trainleak.audits.inversion.generator import BNGenerator
from trainleak.audits.inversion.metrics import Defense, psnr, ssim
from trainleak.audits.inversion.optimize import OptimizeInverter
from trainleak.audits.inversion.split import SplitError, SplitModel, load_model, split_names

__all__ = [
    "BNGenerator",
    "DCIInverter",
    "DecoderInverter",
    "Defense",
    "InversionResult",
    "InvertConfig",
    "OptimizeInverter",
    "SplitError",
    "SplitModel",
    "invert",
    "load_model",
    "psnr",
    "split_names",
    "ssim",
]
